"""Make an fp16-KV variant of the builder's int4 CPU decoder graph.

past_key_values.* inputs and present.* outputs become float16. Each GroupQueryAttention node gets a float16 packed
QKV (Cast after the qkv projection), float16 cos/sin caches (new inline initializers) and float16 past KV; its
attention output is cast back to float32 for the rest of the (fp32-io) graph. Weights stay in the source folder's
model.onnx.data (the new folder symlinks it).

usage: python -m benchmarks.fp16_kv.make_model SRC_DIR DST_DIR
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
# "roundtrip": an accuracy control only. KV io and GQA stay fp32, but qkv, cos/sin and the attention output are
# rounded through fp16 (Cast pairs): what fp16 *storage* alone costs, with fp32 attention arithmetic.
ROUNDTRIP = len(sys.argv) > 3 and sys.argv[3] == "roundtrip"
dst.mkdir(parents=True, exist_ok=True)
model = onnx.load(str(src / "model.onnx"), load_external_data=False)
g = model.graph

for vi in list(g.input) + list(g.output):
    if vi.name.startswith(("past_key_values.", "present.")) and not ROUNDTRIP:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16

# cos/sin caches: load their data (may be external) and add fp16 copies inline
inits = {t.name: t for t in g.initializer}
needed_f16 = {}
gqa = [n for n in g.node if n.op_type == "GroupQueryAttention"]
for n in gqa:
    for idx in (7, 8):
        if len(n.input) > idx and n.input[idx]:
            needed_f16.setdefault(n.input[idx], None)
for name in needed_f16:
    t = inits[name]
    arr = numpy_helper.to_array(t, base_dir=str(src))
    g.initializer.append(numpy_helper.from_array(arr.astype(np.float16), name + "_fp16"))

new_nodes = []
drop_vi = set()
for n in g.node:
    if n.op_type != "GroupQueryAttention":
        new_nodes.append(n)
        continue
    ins = list(n.input)
    # query (packed qkv) and, if present, separate key / value
    for idx in (0, 1, 2):
        if len(ins) > idx and ins[idx]:
            casted = ins[idx] + "_fp16"
            new_nodes.append(helper.make_node("Cast", [ins[idx]], [casted], to=TensorProto.FLOAT16,
                                              name=n.name + f"/CastIn{idx}"))
            if ROUNDTRIP:
                new_nodes.append(helper.make_node("Cast", [casted], [casted + "_back"], to=TensorProto.FLOAT,
                                                  name=n.name + f"/CastBack{idx}"))
                casted += "_back"
            n.input[idx] = casted
    for idx in (7, 8):
        if len(ins) > idx and ins[idx]:
            n.input[idx] = ins[idx] + "_fp16"
            if ROUNDTRIP:
                back = ins[idx] + "_fp16_back"
                if not any(x.output[0] == back for x in new_nodes):
                    new_nodes.append(helper.make_node("Cast", [ins[idx] + "_fp16"], [back], to=TensorProto.FLOAT,
                                                      name=ins[idx] + "/CastBack"))
                n.input[idx] = back
    out = n.output[0]
    n.output[0] = out + "_fp16"
    drop_vi.add(out)
    new_nodes.append(n)
    if ROUNDTRIP:  # GQA output is fp32 here: round it through fp16
        new_nodes.append(helper.make_node("Cast", [out + "_fp16"], [out + "_r16"], to=TensorProto.FLOAT16,
                                          name=n.name + "/CastRound"))
        new_nodes.append(helper.make_node("Cast", [out + "_r16"], [out], to=TensorProto.FLOAT,
                                          name=n.name + "/CastOut"))
        continue
    new_nodes.append(helper.make_node("Cast", [out + "_fp16"], [out], to=TensorProto.FLOAT, name=n.name + "/CastOut"))

del g.node[:]
g.node.extend(new_nodes)
keep = [vi for vi in g.value_info if vi.name not in drop_vi]
del g.value_info[:]
g.value_info.extend(keep)

onnx.save(model, str(dst / "model.onnx"))  # external refs stay "model.onnx.data" (relative)
data = dst / "model.onnx.data"
if not data.exists():
    shutil.copy(src / "model.onnx.data", data)  # a copy: ORT rejects symlinks out of the folder, onnx hard links
for f in src.iterdir():
    if f.name not in ("model.onnx", "model.onnx.data") and f.is_file() and not (dst / f.name).exists():
        shutil.copy(f, dst / f.name)
print(f"converted {len(gqa)} GQA nodes; fp16 caches: {list(needed_f16)} -> {dst}")
