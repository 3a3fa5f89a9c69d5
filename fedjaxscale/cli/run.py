"""``fedjaxscale run``: one experiment config into one workdir.

    fedjaxscale run --config=experiments/configs/synthetic.py --workdir=runs/demo [--config.rounds=10]
    fedjaxscale run --config=experiments/configs/synthetic.py:small --workdir=runs/small
    fedjaxscale run --config=... --workdir=runs/demo --resume      # continue from the last checkpoint
    fedjaxscale run --config=... --workdir=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

``run`` may be left out (``fedjaxscale --config=... --workdir=...``). At the end it prints a short
summary (``--json``: the JSON of ``WORKDIR/summary.json``).
"""

import json

from fedjaxscale.cli import common
from fedjaxscale.cli.flags import FLAGS


def main(argv):
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}; config fields are set as --config.FIELD=VALUE")
  distributed = common.start_distributed()
  from fedjaxscale.state import StoreError
  from fedjaxscale.training import ConfigError, outputs, train_and_evaluate

  try:
    summary = train_and_evaluate(
      FLAGS.config, FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite, show_progress=FLAGS.progress
    )
  except (ConfigError, StoreError) as e:  # a bad config, or a client-state store that cannot be written
    common.fail(str(e))
  if distributed.is_lead():
    print(json.dumps(summary, indent=1) if FLAGS.json else "\n".join(outputs.summary_lines(summary, FLAGS.workdir)))
