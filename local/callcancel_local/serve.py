"""`make local`: the local stack, kept running for exploring with the aws CLI or the Python API.

The embedded AWS listens on CALLCANCEL_AWS_PORT (default 4566) and the provider simulator on
CALLCANCEL_SIMULATOR_PORT (default 4567), both on 127.0.0.1. Demo accounts are seeded as in `make demo`.
"""

import os
import sys
import time

from callcancel_local.demo import DEMO_PARAMETERS, TEMPLATE, seed
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.runner import EventSourceRunner
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.sqs_source import BatchResult
from callcancel_local.stack import DeployError, deploy, not_created_lines


def _report(function: str, result: BatchResult) -> None:
    print(f"{time.strftime('%H:%M:%S')} {function}: {len(result.deleted)} done, {len(result.failed)} to retry")


def main() -> int:
    aws_port = int(os.environ.get("CALLCANCEL_AWS_PORT", "4566"))
    simulator_port = int(os.environ.get("CALLCANCEL_SIMULATOR_PORT", "4567"))
    try:
        simulator = ProviderSimulator(port=simulator_port).start()
    except OSError as exc:
        print(
            f"error: cannot start the provider simulator on 127.0.0.1:{simulator_port}: {exc.strerror}. "
            "Stop what uses that port or choose another (CALLCANCEL_SIMULATOR_PORT).",
            file=sys.stderr,
        )
        return 2
    with EmbeddedAws(port=aws_port) as aws, simulator:
        os.environ.update(aws.environment())
        try:
            stack = deploy(
                TEMPLATE,
                parameters={
                    **DEMO_PARAMETERS,
                    "RyngBaseUrl": simulator.ryng_base_url,
                    "PlumBaseUrl": simulator.plum_base_url,
                },
            )
        except DeployError as exc:
            print(f"error: the template cannot be deployed locally: {exc}", file=sys.stderr)
            return 2
        runner = EventSourceRunner(stack, on_batch=_report)
        seed(simulator)
        simulator.add_ryng_calls("acme", *(f"call-{i}" for i in range(1, 100)))
        simulator.add_ryng_calls("initech", "i-1")  # known to Ryng; its secret is missing until you create it
        queue, dlq = stack.outputs["CancelQueueUrl"], stack.outputs["DeadLetterQueueUrl"]
        table, bus = stack.outputs["OutcomeTableName"], stack.outputs["EventBusName"]
        print(f"""callcancel local stack is up (Ctrl-C to stop).

  export AWS_ENDPOINT_URL={aws.endpoint_url} AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  export CALLCANCEL_QUEUE_URL={queue}
  export CALLCANCEL_DLQ_URL={dlq}
  export CALLCANCEL_OUTCOME_TABLE={table} CALLCANCEL_EVENT_BUS={bus}

  .venv/bin/callcancel publish ryng --account acme --call-id call-1 --request-id order-1:cancel
  .venv/bin/callcancel publish ryng --account acme --call-id call-2 --request-id order-2:cancel --via eventbridge
  .venv/bin/callcancel status order-1:cancel order-2:cancel
  .venv/bin/callcancel publish ryng --account initech --call-id i-1     # no secret: dead-lettered as config
  .venv/bin/callcancel dlq list
  .venv/bin/callcancel dlq redrive --class config --dry-run

  (or --stack-name {stack.name} instead of the exports; the aws CLI needs --endpoint-url $AWS_ENDPOINT_URL)

Demo accounts: ryng/acme (calls call-1..call-99 pending), ryng/globex (revoked token), ryng/initech (call i-1;
no secret until you create callcancel/ryng/initech with access_token demo-initech-token), plum/acme
(deployments 7001/1 and 7001/2). Provider simulator: {simulator.base_url} (GET /_sim/calls).
""")
        print("\n".join(not_created_lines(stack)))
        try:
            while True:
                if not runner.poll_once():
                    time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
