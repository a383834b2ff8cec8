#!/usr/bin/env python3
"""Example: stream a generation from spqr-server, then score what it wrote.

    /usr/bin/python3 clients/python/example.py --address 127.0.0.1:50051 \
        --stubs build/python_stubs "The GNU General Public License is"
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spqr_client import Client  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="The GNU General Public License is")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--stubs", default=os.environ.get("SPQR_PYTHON_STUBS", "build/python_stubs"),
                        help="folder of the generated Python stubs (build target spqr_proto_python)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with Client(args.address, stubs_dir=args.stubs, timeout=120) as client:
        client.wait_until_serving(timeout=60)
        info = client.info()
        print(f"model {info.model_name} ({info.architecture.model_type}, "
              f"{info.quantization.method}) on {info.backend}", file=sys.stderr)

        text = []
        last = None
        print(args.prompt, end="", flush=True)
        for chunk in client.generate_stream(args.prompt, max_new_tokens=args.max_new_tokens,
                                            temperature=args.temperature, seed=args.seed):
            print(chunk.text, end="", flush=True)
            text.append(chunk.text)
            last = chunk
        print()
        print(f"[{client.finish_reason_name(last)}: {last.usage.prompt_tokens} prompt + "
              f"{last.usage.completion_tokens} generated tokens]", file=sys.stderr)

        continuation = "".join(text)
        if continuation:
            score = client.score(pairs=[(args.prompt, continuation)]).pair_scores[0]
            print(f"log P(continuation | prompt) = {score.sum_logprob:.3f} over "
                  f"{score.num_continuation_tokens} tokens (greedy: {score.is_greedy})",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
