"""Assertions shared by the CLI tests."""


def one_error_line(r, *fragments):
    """r: a click CliRunner result: exit code 2 and exactly one stderr line, `error: ...`,
    holding every fragment; no traceback."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
