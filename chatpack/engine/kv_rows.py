"""The model builder's decoder graph run by onnxruntime directly, over KV-cache rows this module owns.

onnxruntime-genai's ``Generator`` cannot take a new sequence into a running batch on CPU (its batch is fixed when it is
made, and a batched generator takes its prompt once). The graph it runs can: its GroupQueryAttention reads each
row's own length from the attention mask (``seqlens_k``), and when the past and present KV tensors are one buffer
(``past_present_share_buffer``) it writes each new key/value in place at that row's position. So :class:`KvRows`
keeps ``rows`` fixed buffers of ``row_tokens`` positions per layer and runs any contiguous run of rows, each at its
own length: a decode step over every active row, a prompt (or the rest of one, after a reused prefix) into one row.

What the graph allows (onnxruntime 1.32, checked in tests): several new tokens with a past (a prompt after a reused
prefix, a speculative draft) only for a batch of one row; one new token per row for a batch. Rows to run must be
contiguous in memory: the caller keeps its active rows first and exchanges rows with :meth:`KvRows.swap_rows`.
Logits come back for the last new position (a prefill), or for every new one when asked (a speculative draft).
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

LOGITS_FROM = "chatpack_logits_from"  # the input last_positions_graph adds
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def last_positions_graph(model_file: Path, logits: str) -> bytes | None:
    """The decoder graph with an input ``logits_from`` (int64 [1]): logits only for positions from there on.

    The builder's graph computes the vocabulary projection for every position of a prompt, though the next token
    needs the last one: 21% of a prefill's arithmetic for SmolLM2-135M (a 49k x 576 projection), and a logits array
    of prompt x vocabulary floats. The projection's input is sliced first (the final norm is per position, so the
    last position's logits are the same bits). None when the graph does not end in a projection of one input.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    nodes = list(model.graph.node)
    head = next((n for n in nodes if logits in n.output), None)
    if head is None or head.op_type not in ("MatMulNBits", "MatMul") or not head.input:
        return None
    model.graph.input.append(helper.make_tensor_value_info(LOGITS_FROM, TensorProto.INT64, [1]))
    model.graph.initializer.extend([helper.make_tensor("chatpack_logits_end", TensorProto.INT64, [1], [2**62]),
                                    helper.make_tensor("chatpack_logits_axis", TensorProto.INT64, [1], [1])])
    cut = helper.make_node("Slice", [head.input[0], LOGITS_FROM, "chatpack_logits_end", "chatpack_logits_axis"],
                           ["chatpack_last_positions"], name="chatpack_logits_slice")
    head.input[0] = "chatpack_last_positions"
    model.graph.node.insert(nodes.index(head), cut)
    return model.SerializeToString()


def _lazy_zeros(shape: tuple[int, ...], dtype: type) -> tuple[np.ndarray, mmap.mmap]:
    """A zeroed array whose memory is taken page by page as it is written (anonymous mmap, small pages).

    ``np.zeros`` asks for transparent huge pages on large arrays: the first token written to a row then maps (and
    zero-fills) 2 MB around it in every layer, so each row took its whole share of the budget at first use (measured:
    ~0.5 s and the full 2 GB for 8 fresh rows of the bundled model). With 4 kB pages a row's memory follows its tokens.
    """
    size = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
    # MAP_NORESERVE: the rows are address space, not a commitment; the scheduler bounds what is written.
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype, count=int(np.prod(shape))).reshape(shape), buffer


class KvRows:
    """``model_dir``'s decoder (``genai_config.json`` names its file, inputs and shapes) with ``rows`` KV rows of
    ``row_tokens`` positions each (or none until :meth:`allocate`); ``threads``: intra-op threads (None: onnxruntime's
    default)."""

    def __init__(self, model_dir: str | Path, rows: int = 0, row_tokens: int = 0, threads: int | None = None):
        import onnxruntime as ort

        self._ort = ort
        config = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.layers, self.kv_heads = int(decoder["num_hidden_layers"]), int(decoder["num_key_value_heads"])
        self.head_size, self.vocab_size = int(decoder["head_size"]), int(config["vocab_size"])
        names, outputs = decoder["inputs"], decoder["outputs"]
        self._ids, self._mask, self._logits = names["input_ids"], names["attention_mask"], outputs["logits"]
        self._past = [names[f"past_{kind}_names"] % i for i in range(self.layers) for kind in ("key", "value")]
        self._present = [outputs[f"present_{kind}_names"] % i for i in range(self.layers) for kind in ("key", "value")]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        model_file = Path(model_dir) / decoder["filename"]
        graph = last_positions_graph(model_file, self._logits)
        if graph is not None:  # the weights stay in the folder: onnxruntime reads them from there
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(model_file.parent))
        self.sliced = graph is not None
        self.paired = False  # odd passes get one more position (set by probe)
        self.session = ort.InferenceSession(graph or str(model_file), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "position_ids" in inputs or self._past[0] not in inputs:
            raise ValueError(f"{model_dir}: not a decoder this engine drives (it takes {sorted(inputs)[:4]}...)")
        self.dtype = _DTYPES[inputs[self._past[0]].type]
        self.allocate(rows, row_tokens)

    def allocate(self, rows: int, row_tokens: int) -> None:
        """(Re)make the cache: ``rows`` empty rows of ``row_tokens`` positions."""
        self.rows, self.row_tokens = rows, row_tokens
        shape = (rows, self.kv_heads, row_tokens, self.head_size)
        self._cache, self._buffers = map(list, zip(*(_lazy_zeros(shape, self.dtype) for _ in self._past)))
        self.touched = [0] * rows  # per row: the most positions written since it was last released

    def release(self, row: int) -> None:
        """Give row ``row``'s memory back to the system (its cached tokens are lost; it reads as zeros again)."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        for cache, buffer in zip(self._cache, self._buffers):
            row_bytes = cache[row].nbytes
            start, end = row * row_bytes, (row + 1) * row_bytes
            start, end = -(-start // page) * page, end // page * page  # whole pages of this row only
            if end > start:
                buffer.madvise(mmap.MADV_DONTNEED, start, end - start)
        self.touched[row] = 0

    @property
    def resident_tokens(self) -> int:
        """Positions written in all rows since they were last released: what the cache holds in memory."""
        return sum(self.touched)

    @property
    def bytes_per_token(self) -> int:
        """KV-cache bytes one token takes in one row (keys and values of every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_size * np.dtype(self.dtype).itemsize

    @property
    def cache_bytes(self) -> int:
        """The most memory the KV rows take (reached as rows fill up)."""
        return self.rows * self.row_tokens * self.bytes_per_token

    def run(self, first_row: int, ids: np.ndarray, lengths: list[int], every_position: bool = False) -> np.ndarray:
        """Run rows ``first_row ..`` (one per line of ``ids``, int64 [rows, new]) whose caches hold ``lengths``
        tokens; write the new tokens' keys/values after them; return the logits [rows, positions, vocab]: of the last
        new position, or of every new one with ``every_position``.

        With ``paired`` (see :meth:`probe`), a row's odd number of new positions gets one more (its last token again,
        written past them and overwritten by the row's next pass), so that every position is computed in a pair,
        and the sliced vocabulary projection takes two positions."""
        count, new = ids.shape
        if new > 1 and count > 1:
            raise ValueError("several new tokens per row run one row at a time")
        if max(lengths) + new > self.row_tokens:
            raise ValueError(f"a row holds {self.row_tokens} tokens; {max(lengths)} + {new} do not fit")
        wanted, first = new, 0 if every_position or not self.sliced else new - 1
        if self.paired and count == 1 and new % 2 and lengths[0] + new < self.row_tokens:
            ids, new = np.concatenate([ids, ids[:, -1:]], axis=1), new + 1
        elif self.paired and count == 1 and first:
            first -= 1  # the vocabulary projection is a multiplication too: it takes the last two positions
        for row, length in enumerate(lengths, start=first_row):
            self.touched[row] = max(self.touched[row], length + new)
        mask = np.zeros((count, max(lengths) + new), np.int64)
        for row, length in enumerate(lengths):
            mask[row, : length + new] = 1
        logits = np.empty((count, new - first, self.vocab_size), np.float32)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._ids, np.ascontiguousarray(ids, np.int64))
        binding.bind_cpu_input(self._mask, mask)
        if self.sliced:
            binding.bind_cpu_input(LOGITS_FROM, np.array([first], np.int64))
        for past, present, cache in zip(self._past, self._present, self._cache):
            value = self._ort.OrtValue.ortvalue_from_numpy(cache[first_row: first_row + count])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: GQA writes the new entries in place
        binding.bind_output(self._logits, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits[:, : wanted - first]

    def probe(self) -> tuple[bool, bool]:
        """(a decode step computes every row the same whatever the number of rows, prompt passes compute a position
        the same however the prompt is split): what the batch may rely on for this model and build. Both hold for the
        builder's int4 models on onnxruntime 1.32 CPU. Its int8 ones (MatMulNBits with 8 bits) multiply activation
        rows in pairs and an unpaired last row differently (up to ~2 in a logit), whichever row it is paired with:
        their decode steps then need an even number of rows (the batch's job), and their prompt passes an even number
        of positions, which sets ``paired`` for :meth:`run`; the split check runs after that. Uses rows 0-2 (3 rows
        needed) and leaves them empty."""
        self.paired, prompt = False, np.arange(100, 140)[None]
        for row in range(3):
            self.run(row, prompt, [0])
        steps = [self.run(0, np.full((count, 1), 7), [40] * count)[:, 0].copy() for count in (1, 2, 3)]
        same_rows = np.array_equal(steps[0][0], steps[1][0]) and np.array_equal(steps[2][2], steps[2][0])
        self.paired = not same_rows
        whole = self.run(0, prompt, [0])[0, -1].copy()
        splits_exact = True
        for cut in (3, 17, 33):
            self.run(0, prompt[:, :cut], [0])
            splits_exact &= bool(np.array_equal(self.run(0, prompt[:, cut:], [cut])[0, -1], whole))
        for row in range(3):
            self.release(row)
        return bool(same_rows), splits_exact

    def swap_rows(self, a: int, a_length: int, b: int, b_length: int) -> None:
        """Exchange the cached tokens of rows ``a`` and ``b`` (their first ``a_length`` / ``b_length`` positions)."""
        if a == b:
            return
        self.touched[a], self.touched[b] = max(self.touched[a], b_length), max(self.touched[b], a_length)
        for cache in self._cache:
            held = cache[a, :, :a_length].copy()
            cache[a, :, :b_length] = cache[b, :, :b_length]
            cache[b, :, :a_length] = held
