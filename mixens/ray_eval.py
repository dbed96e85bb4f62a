"""Data-parallel lm-eval on a Ray cluster: one replica of the whole ensemble per Ray actor (one GPU each when
the cluster has GPUs), joined into one torch.distributed group, so lm-eval shards the documents and gathers
the results exactly as under torchrun (mixens.data_parallel). Rank 0 writes the results.

    python -m mixens.ray_eval --replicas 4 [--address auto] -- run --model mixens --tasks gsm8k_paper \\
        --model_args "models=...,strategy=mixture" --output_path results

Everything after `--` is `mixens-lm-eval`'s command line, run by every replica in the folder the command was
started from (on a cluster, give an --output_path that rank 0's node can write, and data every node can read).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from mixens.errors import ConfigError


def evaluate_on_ray(lm_eval_args: list[str], replicas: int, address: str | None = None) -> int:
    """Run lm-eval's CLI in `replicas` Ray actors forming one distributed group; the exit code of the worst."""
    import ray

    if replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}.")
    ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= replicas else 0
    actor = ray.remote(num_cpus=1, num_gpus=gpus)(Replica)
    started = [actor.remote() for _ in range(replicas)]
    address_of_rank0, port = ray.get(started[0].rendezvous.remote())
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "WANDB_", "MIXENS_", "OMP_"))}
    runs = [
        replica.run.remote(lm_eval_args, os.getcwd(), env, rank, replicas, address_of_rank0, port)
        for rank, replica in enumerate(started)
    ]
    return max(ray.get(runs))


class Replica:
    """One Ray actor: a process that runs lm-eval's CLI as one rank of the group."""

    def rendezvous(self) -> tuple[str, int]:
        """This node's address and a free port on it, where rank 0 will wait for the others."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            return ray_node_address(), probe.getsockname()[1]

    def run(self, args: list[str], cwd: str, env: dict, rank: int, world: int, master: str, port: int) -> int:
        os.environ.update(env)
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",  # Ray gives each actor its own GPU
                           "MASTER_ADDR": master, "MASTER_PORT": str(port)})  # fmt: skip
        os.chdir(cwd)
        from mixens import lm_eval_cli

        sys.argv = ["mixens-lm-eval", *args]
        try:
            lm_eval_cli.main()
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        return 0


def ray_node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.ray_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, required=True, help="how many replicas of the ensemble")
    parser.add_argument("--address", default=None, help="a Ray cluster's address ('auto': the running one)")
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="after --: mixens-lm-eval's arguments")
    options = parser.parse_args()
    args = options.lm_eval_args[1:] if options.lm_eval_args[:1] == ["--"] else options.lm_eval_args
    try:
        sys.exit(evaluate_on_ray(args, options.replicas, options.address))
    except ConfigError as err:
        print(f"mixens: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
