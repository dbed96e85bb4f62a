"""Whether the pinned vLLM's streaming-input sessions leave the engine's other requests exact.

    .venv-vllm/bin/python -m mixens.bench.vllm_sessions --model packaged:smollm2-135m-instruct

A streaming-input session (AsyncLLM.generate with an async generator of StreamingInput) is one request that a
member could keep per row: each of its turns would read only the tokens the member missed, instead of a new
request re-reading the text's unfinished KV block. mixens' vLLM mixture would use them only if they are exact.
This probe decodes one prompt greedily as a plain request, then runs a session of two turns (the second turn
sends the first turn's last token, as a resumed member would), and decodes the same prompt again as a plain
request while the session is open and after it is closed. Greedy decoding is deterministic, so every plain
decode must give the first one's tokens and log-probabilities, and the session's two turns together must too.
"""

from __future__ import annotations

import argparse
import asyncio
import json

TOKENS = 8


async def probe(engine, prompt_ids: list[int]) -> dict:
    from vllm import SamplingParams
    from vllm.engine.protocol import StreamingInput
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def plain(request_id: str) -> dict:
        params = SamplingParams(max_tokens=TOKENS, temperature=0.0, logprobs=3, detokenize=False)
        async for output in engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id):
            last = output.outputs[0]
        top = {token: round(found.logprob, 4) for token, found in last.logprobs[0].items()}
        return {"tokens": list(last.token_ids), "first_top3_logprobs": top}

    def turn_params(tokens: int):
        return SamplingParams(max_tokens=tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA, detokenize=False)

    turns: asyncio.Queue = asyncio.Queue()

    async def chunks():
        while (chunk := await turns.get()) is not None:
            yield chunk

    session = engine.generate(chunks(), turn_params(TOKENS // 2), "session")

    async def turn(ids: list[int]) -> list[int]:
        await turns.put(StreamingInput(TokensPrompt(prompt_token_ids=ids), turn_params(TOKENS // 2)))
        written = []
        while True:
            completion = (await session.__anext__()).outputs[0]
            written += completion.token_ids
            if completion.finish_reason is not None:
                return written

    found = {"plain_before": await plain("before")}
    first = await turn(prompt_ids)
    found["session_turns"] = [first, await turn(first[-1:])]
    found["plain_during_session"] = await plain("during")
    await session.aclose()
    found["plain_after_session"] = await plain("after")
    reference = found["plain_before"]
    found["exact"] = {
        "session": sum(found["session_turns"], []) == reference["tokens"],
        "plain_during_session": found["plain_during_session"] == reference,
        "plain_after_session": found["plain_after_session"] == reference,
    }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mixens.bench.vllm_sessions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct", help="a model path or packaged:<name>")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument(
        "--out", default="vllm_sessions.json", help="where the findings are written (vLLM logs to stdout)"
    )
    options = parser.parse_args()

    from pathlib import Path

    from transformers import AutoTokenizer
    from vllm import __version__
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from mixens.packaged import resolve

    path = resolve(options.model)
    args = AsyncEngineArgs(model=path, enforce_eager=True, dtype="float32", kv_cache_memory_bytes=2**30, block_size=32)
    engine = AsyncLLM.from_engine_args(args)
    try:
        prompt_ids = AutoTokenizer.from_pretrained(path)(options.prompt).input_ids
        found = {"vllm": __version__, "model": options.model, **asyncio.run(probe(engine, prompt_ids))}
    finally:
        engine.shutdown()
    text = json.dumps(found, indent=2)
    Path(options.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
