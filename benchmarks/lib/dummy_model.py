"""A Llama-3-8B-shaped model folder for `--load-format dummy`: no weights to download.

The shape (layers, heads, hidden sizes, vocabulary) is Llama-3-8B's, so the GPU does the
same work per token; the weights are random, so the text is noise. The tokenizer is the
bundled default model's (its ids all fall inside the 128k vocabulary).

    python -m benchmarks.lib.dummy_model /tmp/llama3-8b-shape
"""

import argparse
import json
import shutil
from pathlib import Path

from serve_app.core.default_model import prepare_default_model

CONFIG = Path(__file__).resolve().parents[1] / "models" / "llama3-8b-shape.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_dummy_model(out_dir: Path) -> Path:
    """Write config.json and the default model's tokenizer files into `out_dir`."""
    source = prepare_default_model()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(json.loads(CONFIG.read_text()), indent=2))
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out_dir / name)
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    print(build_dummy_model(parser.parse_args().out_dir))
