# Hugging Face tokenizers on one thread, line by line over a text file: the speed anchor halo's tokenizer is
# compared with (bench/bench_tokenizer). usage: python3 bench/tokenizer_hf.py TOKENIZER_JSON TEXT_FILE
import os, sys, time
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
lines = text.split("\n")               # each line without its newline, as bench/bench_tokenizer.c does
nbytes = len(text.encode("utf-8"))      # MB/s over the whole file's bytes, as there
best = 0.0
for _ in range(3):
    t0 = time.perf_counter()
    n = 0
    for l in lines:
        n += len(tok.encode(l, add_special_tokens=False).ids)
    best = max(best, nbytes / (time.perf_counter() - t0) / 1e6)
print(f"HF tokenizers {os.path.basename(os.path.dirname(sys.argv[1]))}: {best:.2f} MB/s line by line ({n} tokens)")
