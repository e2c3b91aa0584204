"""The ctypes structs match the C header: sizes and every field's offset, as a C compiler sees
them."""
import ctypes
import os
import subprocess

from rewardkit import _ffi

from conftest import REPO


def test_struct_layouts_match_the_c_header(tmp_path):
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "rewardkit.h"', "int main(void) {"]
    for cname, cls in _ffi.STRUCTS.items():
        lines.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for field, _ in cls._fields_:
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (cname, field, cname, field))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c99", "-I", os.path.join(REPO, "include"), str(src), "-o", str(exe)], check=True)
    c = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    for cname, cls in _ffi.STRUCTS.items():
        assert int(c[cname]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            assert int(c["%s.%s" % (cname, field)]) == getattr(cls, field).offset, "%s.%s" % (cname, field)


def test_version_matches_header():
    import rewardkit

    header = open(os.path.join(REPO, "include", "rewardkit.h")).read()
    assert '#define RK_VERSION_STRING "%s"' % rewardkit.version() in header
