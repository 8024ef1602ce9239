"""A stepped concurrency sweep as a locust LoadTestShape; add it with
`locust -f loadtest/locustfile.py,loadtest/shapes.py ... --sweep-users 1,4,16,64 --step-seconds 30`."""
from __future__ import annotations

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--sweep-users", default="1,4,16,64", help="users per step")
    parser.add_argument("--step-seconds", type=float, default=30.0, help="seconds per step")


class SweepShape(LoadTestShape):
    """Each step holds its user count for --step-seconds, then the run stops."""

    def tick(self):
        options = self.runner.environment.parsed_options
        steps = [int(users) for users in options.sweep_users.split(",")]
        step = int(self.get_run_time() // options.step_seconds)
        if step >= len(steps):
            return None
        return steps[step], steps[step]
