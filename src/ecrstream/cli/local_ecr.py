"""``ecrstream local-ecr``: a local ECR endpoint served until Ctrl-C (``ecrstream.local.serve``).

The same as ``python -m ecrstream.local``; its errors are the command line's (one line, exit 2
for a taken port, a folder it cannot use, a repository it cannot create).
"""

from __future__ import annotations

from pathlib import Path

from ecrstream.cli.errors import EXIT_OK, Context, Failure, UsageError
from ecrstream.cli.options import LocalEcrOptions

__all__ = ["run"]


def run(options: LocalEcrOptions, context: Context) -> int:
    """Serve until SIGINT or SIGTERM; the exit code (0 after the signal)."""
    from botocore.exceptions import ClientError

    from ecrstream.local.serve import serve

    if options.data_dir is not None:
        try:
            Path(options.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--data-dir: cannot use {options.data_dir}: {exc.strerror or exc}"
            ) from None
    try:
        serve(options.port, options.repositories, options.data_dir, region_name=options.region)
    except ImportError:
        raise Failure(
            "local-ecr needs the local ECR endpoint: pip install 'ecrstream[local]'"
            " (or run 'python3 run.py demo' in a checkout)"
        ) from None
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise UsageError(f"--repository: cannot create it: {message}") from None
    except OSError as exc:
        raise UsageError(
            f"--port: cannot listen on 127.0.0.1:{options.port}: {exc.strerror or exc}"
        ) from None
    return EXIT_OK
