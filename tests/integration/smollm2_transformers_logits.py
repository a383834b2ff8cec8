"""Reference side of smollm2_parity_test.py, run by the interpreter that has transformers.

For every prompt of a JSON list: transformers' tokenizer ids (`tokenizer(text).input_ids`, i.e.
with the special tokens the post-processor adds) and LlamaForCausalLM's float32 logits for all
positions (the bf16 checkpoint upcast exactly), written as <out>/ids_<i>.json and
<out>/logits_<i>.npy. For every further TEXT_FILE (UTF-8, read unchanged) only the ids, as
<out>/file_ids_<j>.json.

    python smollm2_transformers_logits.py MODEL_DIR PROMPTS.json OUT_DIR [TEXT_FILE...]
"""

import json
import os
import sys

import numpy as np
import torch
import transformers


def main():
    model_dir, prompts_file, out_dir = sys.argv[1:4]
    text_files = sys.argv[4:]
    torch.set_num_threads(int(os.environ.get("SPQR_TORCH_THREADS", "2")))
    with open(prompts_file, encoding="utf-8") as f:
        prompts = json.load(f)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    for j, path in enumerate(text_files):
        with open(path, encoding="utf-8", newline="") as f:
            ids = tokenizer(f.read()).input_ids
        with open(os.path.join(out_dir, f"file_ids_{j}.json"), "w") as f:
            json.dump(ids, f)
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    for i, text in enumerate(prompts):
        ids = tokenizer(text).input_ids
        with open(os.path.join(out_dir, f"ids_{i}.json"), "w") as f:
            json.dump(ids, f)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        np.save(os.path.join(out_dir, f"logits_{i}.npy"), logits)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"tokenizer {type(tokenizer).__name__}")


if __name__ == "__main__":
    main()
