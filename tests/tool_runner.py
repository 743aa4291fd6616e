"""Run the repository's command-line tools in subprocesses and read their logs."""
import json
import subprocess
import sys


def run_tool(repo_root, *args, env=None, timeout=900):
    """Run ``python ARGS`` (or a command starting with bash) from the repo root.

    Fails the test with the end of the output when the command fails.
    """
    command = list(args) if args[0] == 'bash' else [sys.executable, *args]
    completed = subprocess.run(command,
                               cwd=repo_root,
                               env=env,
                               capture_output=True,
                               text=True,
                               timeout=timeout)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f'{args[:2]} failed:\n{output[-6000:]}'
    return output


def train_records(work_dir):
    """Return the training records of every json log in ``work_dir``, in order."""
    records = []
    for log_path in sorted(work_dir.glob('*.log.json')):
        with open(log_path) as log_file:
            records += [json.loads(line) for line in log_file]
    return [record for record in records if record.get('mode') == 'train']
