"""Hostile and careless inputs (issue 9): no code injection or path escape through the IR, and every bad input
of every class gives exactly one `attnc: error:` line, exit 2, no file written or changed, in bounded time and
memory."""
import ast
import io
import os
import re
import resource
import time
import zipfile

import numpy as np
import pytest

from attnc.cli import main

KERNEL = """builtin.module {
  func.func @k(%0: tensor<16x16xf32>) -> tensor<16x16xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %1 = "tile.exp"(%0) {loc = "a.py:1"} : (tensor<16x16xf32>) -> tensor<16x16xf32>
    func.return %1 : tensor<16x16xf32>
  }
}
"""
# escaped MLIR: newline, python, newline, comment start; a raw CR and U+2028 (both line breaks to some readers)
# and quotes for good measure (escaped non-ASCII bytes would make xDSL read a BytesAttr, which is no name or loc)
PAYLOAD_MLIR = 'x\\0A__import__(\\22os\\22).system(\\22touch PWNED\\22)\\0A#\r\u2028\\27'
PAYLOAD = 'x\n__import__("os").system("touch PWNED")\n#\r\u2028\''
WALK_PAYLOAD = PAYLOAD.replace("\u2028", "")  # xDSL prints non-ASCII as escaped bytes, read back as a BytesAttr


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, pattern=""):
    # informational notes (which inputs were seeded) may precede the one error line
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("attnc: note: ")]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("attnc: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def snapshot(root) -> dict:
    """Every file and folder under root with its content and mode (to prove nothing was written or changed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        out[dirpath] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = (fh.read(), os.stat(p).st_mode)
    return out


# -------------------------------------------------------------------------------------------------- injection


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t.replace("@k", f'@"{PAYLOAD_MLIR}"'), r"function name 'x\\n__import__"),
    (lambda t: t.replace('"y"', '"y=__import__(\\22os\\22)"'), r"result_names entry 'y=__import__"),
    (lambda t: t.replace('"x"', '"start-pos"'), r"arg_names entry 'start-pos' is not an ASCII identifier"),
    (lambda t: t.replace('"x"', '"class"'), r"arg_names entry 'class' is a Python keyword"),
    (lambda t: t.replace('"x"', '"\u00e9t\u00e9"'), r"arg_names entry '\\xe9t\\xe9'"),
    (lambda t: t.replace('"x"', '"\\C3\\A9t\\C3\\A9"'), r"arg_names must be an array of strings"),
    (lambda t: t.replace("@k", '@"../x"'), r"function name '\.\./x'"),
    (lambda t: t.replace("@k", '@"/tmp/x"'), r"function name '/tmp/x'"),
    (lambda t: t.replace('["x"]', '["x", "x2"]'), r"arg_names has 2 names for 1 arguments"),
    (lambda t: t.replace('["x"]', '[1 : i64]'), r"arg_names must be an array of strings"),
])
@pytest.mark.parametrize("command", [["compile", "--emit", "pypto", "--pipeline", "cse", "-o", "{out}"],
                                     ["run", "--target", "pypto-sim"]])
def test_names_that_become_code_or_files_are_refused_where_the_ir_is_read(capsys, tmp_path, edit, pattern, command):
    src = tmp_path / "in.mlir"
    src.write_text(edit(KERNEL))
    before = snapshot(tmp_path)
    argv = [command[0], src, *[a.format(out=tmp_path / "out") for a in command[1:]]]
    code, out, err = cli(capsys, *argv)
    one_error_line(code, err, pattern)
    assert snapshot(tmp_path) == before and not os.path.exists("/tmp/x.pypto.py")


def test_emitter_refuses_names_that_shadow_generated_code(capsys, tmp_path):
    for name, why in (("pypto", "reserved"), ("t1", "reserved"), ("kernel", "reserved")):
        src = tmp_path / "in.mlir"
        src.write_text(KERNEL.replace('"x"', f'"{name}"'))
        code, _, err = cli(capsys, "compile", src, "--emit", "pypto", "--pipeline", "cse")
        one_error_line(code, err, f"arg_names entry '{name}' is {why}")


def _tile_module_text() -> str:
    from attnc.cli import compile_source, load_source
    from attnc.ir import print_ir
    from attnc.passes import DEFAULT_PIPELINES

    # the SWA core: its program has a host constant (the CSA core's divisions are exact reciprocals now)
    src = load_source("sparse_attn_core", "tiny", ["compress_ratio=0"])
    compile_source(src, DEFAULT_PIPELINES["pypto"], verify_each=False)
    return print_ir(src.module)


def _string_attrs(module):
    """(op, attribute/property name) of every string the IR holds, arrays of strings included."""
    from xdsl.dialects.builtin import ArrayAttr, StringAttr

    found = set()
    for op in module.walk():
        for table in (op.attributes, op.properties):
            for key, value in table.items():
                if isinstance(value, StringAttr) or (isinstance(value, ArrayAttr)
                                                     and any(isinstance(v, StringAttr) for v in value.data)):
                    found.add(key)
    return found


def test_every_string_the_emitter_writes_is_escaped_or_refused(tmp_path):
    """Replace every string attribute of a real tile-level module, one attribute name at a time, by a payload of
    Python code between line breaks: the IR is refused where it is read, or the emitted program has the same
    syntax tree as the clean one (the payload only ever lands inside a comment) and is pure ASCII."""
    from xdsl.dialects.builtin import ArrayAttr, StringAttr

    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.ir import IRError, parse_ir, print_ir

    text = _tile_module_text()
    clean = emit_pypto(parse_ir(text))
    clean_tree = ast.dump(ast.parse(clean))
    keys = _string_attrs(parse_ir(text))
    assert {"loc", "sym_name", "arg_names", "result_names", "predicate", "rounding"} <= keys, keys
    outcomes = {}
    for key in sorted(keys):
        module = parse_ir(text)
        for op in module.walk():
            for table in (op.attributes, op.properties):
                value = table.get(key)
                if isinstance(value, StringAttr):
                    table[key] = StringAttr(WALK_PAYLOAD)
                elif isinstance(value, ArrayAttr) and value.data and isinstance(value.data[0], StringAttr):
                    table[key] = ArrayAttr([StringAttr(WALK_PAYLOAD + v.data) for v in value.data])
        hostile_text = print_ir(module)  # through the file format, as an attacker would hand it in
        try:
            program = emit_pypto(parse_ir(hostile_text, "hostile.mlir"))
        except IRError as e:
            assert "\n" not in str(e).splitlines()[0]
            outcomes[key] = "refused"
            continue
        assert ast.dump(ast.parse(program)) == clean_tree, key
        assert program.isascii() and "\n__import__" not in program and "\\n__import__" in program, key
        outcomes[key] = "escaped"
    assert outcomes["loc"] == "escaped"
    for key in ("sym_name", "arg_names", "result_names", "predicate", "rounding", "host_constant"):
        assert outcomes[key] == "refused", (key, outcomes)


@pytest.mark.parametrize("loc_mlir, loc", [
    (WALK_PAYLOAD.replace("\n", "\\0A").replace('"', "\\22").replace("'", "\\27"), WALK_PAYLOAD),
    # no escape in the literal: xDSL keeps raw CR / U+2028 / U+0085 in a StringAttr (Python ends a line at CR)
    ("a.py:1\rimport os\u2028os.system(1)\x85#", "a.py:1\rimport os\u2028os.system(1)\x85#"),
])
def test_loc_with_line_breaks_stays_a_comment_in_the_kernel(capsys, tmp_path, loc_mlir, loc):
    src = tmp_path / "in.mlir"
    src.write_text(KERNEL.replace('"a.py:1"', f'"{loc_mlir}"'), newline="")
    code, out, err = cli(capsys, "compile", src, "--emit", "pypto", "--pipeline", "cse")
    assert code == 0, err
    body = [ln for ln in out.splitlines() if "pypto.exp" in ln]
    assert len(body) == 1 and body[0].endswith("  # " + ascii(loc)[1:-1]), body
    assert out.isascii() and len(ast.parse(out).body) == len(ast.parse(out.replace(body[0], "")).body) + 0


def test_missing_names_get_defaults_and_emit(capsys, tmp_path):
    src = tmp_path / "in.mlir"
    src.write_text(KERNEL.replace(' attributes {arg_names = ["x"], result_names = ["y"]}', ""))
    code, out, err = cli(capsys, "compile", src, "--emit", "pypto", "--pipeline", "cse")
    assert code == 0, err
    assert 'ARG_NAMES = ["arg0", "out0"]' in out


def test_escape_functions():
    from attnc.codegen.escape import UnsafeName, code_text, file_stem, identifier, py_str

    for s in (PAYLOAD, "\x1b[31m", "a\u2028b", "\\", "'\"", "é"):
        t = code_text(s)
        assert t.isascii() and t.isprintable() and "\n" not in t and "\r" not in t
        assert ast.literal_eval(py_str(s)) == s
    for bad in ("../x", "/abs", "a b", "", "x" * 65, "None", "t12", "pypto"):
        with pytest.raises(UnsafeName):
            identifier(bad)
    assert identifier("kv_cache") == "kv_cache" and file_stem("decode_csa") == "decode_csa"
    with pytest.raises(UnsafeName):
        file_stem("../x")


# -------------------------------------------------------------------------------------------------- lexer guard


def test_unterminated_string_is_refused_in_linear_time(capsys, tmp_path):
    """xDSL 0.74's (and 0.75's) string regex backtracks exponentially: 30 characters would take minutes."""
    from attnc.ir.names import bad_string_literal

    for body in ("a" * 30 + "\\q", "a" * 30, "a" * 30 + "\n", "a\\" * 20000):
        t0 = time.perf_counter()
        assert bad_string_literal('"' + body) == 0
        assert time.perf_counter() - t0 < 0.5
    assert bad_string_literal('// "unterminated in a comment\n%0 = "ok\\0A\\\\"') is None
    src = tmp_path / "in.mlir"
    src.write_text('builtin.module {\n  %0 = "attn.exp"() {loc = "' + "a" * 40 + "\\q\n")
    t0 = time.perf_counter()
    code, _, err = cli(capsys, "compile", src)
    one_error_line(code, err, r"in\.mlir:2:28: unterminated string literal or invalid escape")
    assert time.perf_counter() - t0 < 10


# -------------------------------------------------------------------------------------------------- outputs


def test_outputs_are_all_or_nothing(tmp_path, monkeypatch):
    """A rename failing midway restores the file it replaced, removes the new ones and the folders made."""
    from attnc import io as aio

    old = tmp_path / "old.txt"
    old.write_text("before")
    before = snapshot(tmp_path)
    out = aio.Outputs()
    out.add(str(tmp_path / "new" / "deep" / "a.txt"), "a")
    out.add(str(old), "after")
    out.add(str(tmp_path / "b.txt"), "b")
    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3 and str(dst).endswith("b.txt"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(aio.os, "replace", flaky)
    with pytest.raises(aio.OutputError, match=r"b\.txt: cannot write \(No space left on device\)"):
        out.commit()
    monkeypatch.setattr(aio.os, "replace", real_replace)
    assert snapshot(tmp_path) == before


def test_written_files_respect_the_umask(tmp_path):
    from attnc.io import Outputs

    old = os.umask(0o022)
    try:
        out = Outputs()
        out.add(str(tmp_path / "a.mlir"), "x")
        out.commit()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.mlir").st_mode & 0o777 == 0o644


# -------------------------------------------------------------------------------------------------- matrix


def _npz_member(name: str, header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members: dict, compress=False) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def _arrays(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


_BOMBS: dict = {}


def _bomb(path, name):
    """A 1 MB archive that inflates to 1 GiB under `name` (built once per session, then hard-linked)."""
    if name not in _BOMBS:
        import tempfile

        built = os.path.join(tempfile.mkdtemp(prefix="attnc-bomb-"), "bomb.npz")
        size = 1 << 30
        with zipfile.ZipFile(built, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                header = _npz_member(name, {"descr": "|u1", "fortran_order": False, "shape": (size,)}, b"")
                f.write(header)
                block = bytes(8 << 20)
                for _ in range(size // len(block)):
                    f.write(block)
        _BOMBS[name] = built
    os.link(_BOMBS[name], path)
    return str(path)


TINY = ["--config", "tiny"]
SPA = ["run", "sparse_attn_core", *TINY]


def _ir(t, text, name="in.mlir"):
    p = t / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _deep(n):
    return "builtin.module {\n" * n + "}\n" * n


# (id, argv builder taking the tmp folder, pattern of the one error line)
CASES = [
    # IR
    ("use-before-def", lambda t: ["run", _ir(t, KERNEL.replace('"tile.exp"(%0)', '"tile.exp"(%2)').replace(
        "    func.return", '    %2 = "tile.exp"(%0) : (tensor<16x16xf32>) -> tensor<16x16xf32>\n    func.return'))],
     r"used before its definition"),
    ("perm-floats", lambda t: ["run", _ir(t, KERNEL.replace('"tile.exp"(%0) {', '"tile.transpose"(%0) <{perm = '
                                                           '[1.0 : f64, 0.0 : f64]}> {'))],
     r"expected an array of integers"),
    ("f64", lambda t: ["run", _ir(t, KERNEL.replace("f32", "f64"))], r"element type f64 is not supported"),
    ("dynamic-dim", lambda t: ["run", _ir(t, KERNEL.replace("16x16", "?x16"))], r"dynamic or negative dims"),
    ("non-utf8", lambda t: ["compile", _ir(t, b"builtin.module {\xff\xfe}")], r"in\.mlir:1: not UTF-8 text"),
    ("huge-tensor", lambda t: ["run", _ir(t, KERNEL.replace("16x16", "100000x100000"))],
     r"run k may need up to [0-9.e+]+ GB of memory"),
    ("huge-dim", lambda t: ["compile", _ir(t, KERNEL.replace("16x16", "99999999999999x16"))],
     r"too large"),
    ("unterminated-string", lambda t: ["compile", _ir(t, '"' + "a" * 60)], r"unterminated string literal"),
    ("bad-escape", lambda t: ["compile", _ir(t, KERNEL.replace("a.py:1", "a\\qb"))], r"invalid escape"),
    ("no-function", lambda t: ["compile", _ir(t, "builtin.module {\n}\n")], r"expected exactly one func\.func"),
    ("two-functions", lambda t: ["compile", _ir(t, KERNEL.replace("builtin.module {\n", "builtin.module {\n" + "\n".join(
        KERNEL.splitlines()[1:-1]).replace("@k", "@k2") + "\n"))], r"expected exactly one func\.func"),
    ("deep-nesting", lambda t: ["compile", _ir(t, _deep(20000))], r"in\.mlir"),
    ("duplicate-names", lambda t: ["compile", _ir(t, KERNEL.replace('["y"]', '["x"]').replace('["x"]', '["x"]', 1)
                                             .replace("tensor<16x16xf32>) -> tensor<16x16xf32> attr",
                                                      "tensor<16x16xf32>, %9: tensor<2xf32>) -> tensor<16x16xf32> attr")
                                             .replace('arg_names = ["x"]', 'arg_names = ["x", "x"]'))],
     r"arg_names entry 'x' appears twice"),
    ("declaration", lambda t: ["run", _ir(t, "builtin.module {\n  func.func private @k(tensor<2xf32>) -> tensor<2xf32>\n}\n")],
     r"@k is a declaration without a body"),
    ("recursion", lambda t: ["run", _ir(t, KERNEL.replace('"tile.exp"(%0) {loc = "a.py:1"}', 'func.call @k(%0)'))],
     r"'func.call' is not an op of attnc's IR"),
    ("foreign-op", lambda t: ["run", _ir(t, KERNEL.replace('%1 = "tile.exp"(%0) {loc = "a.py:1"} : (tensor<16x16xf32>) -> '
                                                           'tensor<16x16xf32>', '%1 = "scf.execute_region"() ({\n'
                                                           '      scf.yield %0 : tensor<16x16xf32>\n    }) : () -> '
                                                           'tensor<16x16xf32>'))],
     r"'scf.execute_region' is not an op of attnc's IR"),
    ("folder-named-mlir", lambda t: ["compile", str(t / "d.mlir") if (t / "d.mlir").mkdir() is None else ""],
     r"d\.mlir: cannot read \(Is a directory\)"),
    ("missing-file", lambda t: ["compile", str(t / "nope.mlir")], r"nope\.mlir: cannot read"),
    # sizes
    ("batch-1e8", lambda t: ["run", "qkv_proj_rope", *TINY, "--set", "batch=100000000"],
     r"run qkv_proj_rope may need up to [0-9.e+]+ GB of memory"),
    ("batch-1e23", lambda t: ["run", "qkv_proj_rope", "--set", "batch=" + "1" + "0" * 23],
     r"batch must be at most 2147483647"),
    ("batch-digits", lambda t: ["run", "qkv_proj_rope", "--set", "batch=" + "9" * 5000], r"expected an integer"),
    ("seed-2**80", lambda t: ["run", "qkv_proj_rope", "--seed", str(2**80)], r"seed \d+ out of range"),
    ("seed-negative", lambda t: ["run", "qkv_proj_rope", "--seed", "-1"], r"seed -1 out of range"),
    ("norm-eps-inf", lambda t: ["run", "qkv_proj_rope", "--set", "norm_eps=inf"], r"norm_eps must be finite"),
    ("verify-each-huge", lambda t: ["compile", "qkv_proj_rope", "--set", "batch=100000000", "--verify-each"],
     r"--verify-each on qkv_proj_rope may need up to"),
    # .npz
    ("npz-empty", lambda t: [*SPA, "--inputs", _ir(t, b"", "in.npz")], r"in\.npz: not a readable \.npz archive"),
    ("npz-not-npy", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"q.npy": b"hello"})],
     r"array 'q': not a valid \.npy header"),
    ("npz-not-npy-name", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"readme.txt": b"x"})],
     r"member 'readme\.txt' is not an \.npy array"),
    ("npz-1e13-elements", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"q.npy": _npz_member(
        "q", {"descr": "<f4", "fortran_order": False, "shape": (10**13,)}, b"\0" * 64)})],
     # refused before any data is read: by its shape, or (no expected shapes known yet) by its declared size
     r"array 'q': (shape \[10000000000000\] does not match|header declares 40000000000000 data bytes)"),
    ("npz-right-shape-short-data", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"q.npy": _npz_member(
        "q", {"descr": "<f4", "fortran_order": False, "shape": (2, 2, 4, 128)}, b"\0" * 64)})],
     r"array 'q': header declares 8192 data bytes but the member holds 64"),
    ("npz-pickle", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"q.npy": _npz_member(
        "q", {"descr": "|O", "fortran_order": False, "shape": (2, 2, 4, 128)}, b"\0" * 64)})],
     r"dtype object is not a plain numeric dtype"),
    ("npz-bomb-unknown-name", lambda t: [*SPA, "--inputs", _bomb(t / "in.npz", "zzz")],
     r"array 'zzz' is not a parameter of sparse_attn_core"),
    ("npz-bomb-known-name", lambda t: [*SPA, "--inputs", _bomb(t / "in.npz", "q")], r"array 'q': shape \[\d+\]"),
    ("npz-hostile-name", lambda t: [*SPA, "--inputs", _zip(t / "in.npz", {"../\x1b[31mq.npy": b""})],
     r"array '\.\./\\x1b\[31mq' is not a parameter"),
    ("npz-directory", lambda t: [*SPA, "--inputs", str(t)], r"not a readable \.npz archive"),
    ("npz-missing", lambda t: [*SPA, "--inputs", str(t / "nope.npz")], r"nope\.npz: no such file"),
    ("npz-wrong-kind", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", start_pos=np.zeros(2, np.float32))],
     r"array 'start_pos': expected an integer array"),
    # index inputs: one rule, checked on the host
    ("cmp_idx-below-padding", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", cmp_idx=np.full((2, 2, 4), -2, np.int32))],
     r"array 'cmp_idx'\[0, 0, 0\]: value -2 outside \[-1, 7\]"),
    ("cmp_idx-past-n_cmp", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", cmp_idx=np.full((2, 2, 4), 8, np.int32))],
     r"array 'cmp_idx'\[0, 0, 0\]: value 8 outside \[-1, 7\]"),
    ("cmp_idx-listed-twice", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", cmp_idx=np.tile(
        np.array([3, -1, -1, 3], np.int32), (2, 2, 1)))],
     r"array 'cmp_idx'\[0, 0, 3\]: id 3 listed twice in row \[0, 0\] \(also at position 0"),
    ("start_pos-negative", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", start_pos=np.array([0, -1], np.int32))],
     r"array 'start_pos'\[1\]: value -1 outside \[0, 62\]"),
    ("start_pos-past-max", lambda t: [*SPA, "--inputs", _arrays(t / "in.npz", start_pos=np.array([63, 0], np.int32))],
     r"array 'start_pos'\[0\]: value 63 outside \[0, 62\]"),
    # issue 21: one error line where there was a traceback (exit 3) or an allocation before the check
    ("seqlens-int32-overflow", lambda t: ["run", "sparse_attn_core", *TINY, "--set", "layout=packed", "--seqlens",
                                          "2147483647,5"], r"--seqlens: 2147483652 tokens in all exceed 2\*\*31 - 1"),
    ("steps-1e8", lambda t: ["run", "decode_swa", *TINY, "--steps", "100000000"],
     r"--steps: 100000000 steps, more than 1048576"),
    ("module-of-two-blocks", lambda t: ["compile", _ir(t, "builtin.module {\n^bb0:\n" + "\n".join(
        KERNEL.splitlines()[1:-1]) + "\n^bb1:\n}\n")], r"builtin\.module must hold exactly one block, found 2"),
    ("region-less-func", lambda t: ["compile", _ir(t, 'builtin.module {\n  "func.func"() <{sym_name = "k", '
                                                      'function_type = () -> ()}> : () -> ()\n}\n')],
     r"@k is a declaration without a body"),
    ("escape-sequence-in-ir", lambda t: ["compile", _ir(t, "builtin.module {\x1b[31m\n}\n")],
     r"in\.mlir:1:17: Unexpected character: \\x1b$"),
    ("steps-file-deep-json", lambda t: ["run", "decode_swa", *TINY, "--steps-file",
                                        _ir(t, "[" * 100000 + "]" * 100000, "s.json")], r"nested deeper than 32"),
    ("tune-timeout-nan", lambda t: ["tune", "sparse_attn_core", "--timeout", "nan", "-o", str(t / "t.json")],
     r"--timeout must be a positive number"),
    ("tune-ray-empty", lambda t: ["tune", "sparse_attn_core", "--ray", "", "-o", str(t / "t.json")],
     r"--ray: an empty address"),
    ("tune-space-wrong-type", lambda t: ["tune", "sparse_attn_core", "--space", "tile-softmax.kv-tile=abc", "-o",
                                         str(t / "t.json")], r"--space tile-softmax\.kv-tile: 'abc' is not of type int"),
    ("inputs-max-pos-2e31", lambda t: ["inputs", "decode_csa", *TINY, "--set", "max_pos=2147483647", "-o",
                                       str(t / "in.npz")], r"inputs decode_csa may need up to [0-9.e+]+ GB of memory"),
    ("plot-visibility-huge", lambda t: ["plot", "visibility", "decode_csa", *TINY, "--set", "max_pos=2147483647",
                                        "-o", str(t / "v.png")], r"plot visibility of decode_csa may need up to"),
    ("tune-huge", lambda t: ["tune", "decode_csa", *TINY, "--set", "max_pos=2147483647", "-o", str(t / "t.json")],
     r"tune decode_csa may need up to [0-9.e+]+ GB of memory"),
    # output paths (nothing of the command may be left behind)
    ("out-is-a-directory", lambda t: [*SPA, "--out", str(t)], r"cannot write \(is a directory\)"),
    ("out-under-a-file", lambda t: [*SPA, "--out", _ir(t, "x", "f") + "/o.npz"], r"f is not a directory"),
    ("out-read-only", lambda t: [*SPA, "--out", "/proc/attnc-out.npz"], r"/proc/attnc-out\.npz: cannot write"),
    ("o-under-a-file", lambda t: ["compile", "qkv_proj_rope", "-o", _ir(t, "x", "f") + "/d"], r"is not a directory"),
    ("dump-dir-and-read-only-o", lambda t: ["compile", "qkv_proj_rope", "--pipeline", "cse,canonicalize", "--dump-dir",
                                            str(t / "dumps"), "-o", "/proc/attnc-out"],
     r"/proc/attnc-out(/qkv_proj_rope\.mlir)?: cannot write"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(capsys, tmp_path, monkeypatch, case):
    _, build, pattern = case
    monkeypatch.setenv("ATTNC_MEMORY_LIMIT_BYTES", str(32 * 10**9))  # the same answer on any machine
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work)
    before = snapshot(tmp_path)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    code, _, err = cli(capsys, *argv)
    seconds = time.perf_counter() - t0
    one_error_line(code, err, pattern)
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "a failing command wrote or changed a file"
    assert seconds < 30, seconds
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 << 10  # KiB: under 512 MiB more


def test_index_input_rule_applies_to_every_caller_of_make_inputs():
    """One rule for host-checkable index inputs: make_inputs (used by the CLI, tests, benchmarks) refuses an
    out-of-range value with the array, the element and the range, and accepts the whole range, -1 included."""
    import torch

    from attnc.kernels_src import STAGES, resolve_config
    from attnc.kernels_src.inputs import INDEX_INPUTS, IndexInputError, make_inputs

    st, cfg = STAGES["sparse_attn_core"], resolve_config("tiny")
    assert set(INDEX_INPUTS) >= {"start_pos", "cmp_idx"}
    ok = make_inputs(st, cfg, 0, {"cmp_idx": torch.tensor([-1, 0, 7, 3], dtype=torch.int32).expand(2, 2, 4),
                                  "start_pos": torch.tensor([0, 62], dtype=torch.int32)})
    assert int(ok["cmp_idx"].max()) == 7
    for given, pattern in (({"cmp_idx": torch.full((2, 2, 4), 8, dtype=torch.int32)}, r"'cmp_idx'\[0, 0, 0\]: value 8"),
                           ({"start_pos": torch.tensor([5, 63], dtype=torch.int32)}, r"'start_pos'\[1\]: value 63")):
        with pytest.raises(IndexInputError, match=pattern):
            make_inputs(st, cfg, 0, given)


def test_fuzz_finding_runaway_parallel_bound_is_refused(capsys):
    """A fuzz finding: a tile.parallel whose constant upper bound (2^31 - 1) exceeds its carried rows used to run
    ~5e8 interpreter iterations; the verifier refuses it where the IR is read."""
    path = os.path.join(os.path.dirname(__file__), "fuzz_findings", "parallel_2e31_rows_hang.mlir")
    t0 = time.perf_counter()
    code, _, err = cli(capsys, "run", path, "--level", "tile")
    one_error_line(code, err, r"upper bound 2147483647 exceeds the \d+ rows of the carried tensors")
    assert time.perf_counter() - t0 < 30
