"""The CLI's promise for errors a user can fix: exit status 2, no traceback, exactly one `error: ...` line."""


def one_error_line(output: str, exit_code: int, *phrases: str) -> str:
    """The single `error:` line of a command's output, checked for the exit status and for each phrase."""
    assert exit_code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def user_error(result, *phrases: str) -> str:
    """`one_error_line` for a typer CliRunner result."""
    return one_error_line(result.output, result.exit_code, *phrases)
