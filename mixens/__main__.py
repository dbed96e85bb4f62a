from mixens.cli import main

main()
