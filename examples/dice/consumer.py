import logging
logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)-8s %(message)s"
)

import random

from cdumay_result import Result
from kser import Operation, OperationRegistry, Task

oregistry = OperationRegistry()


@oregistry.subscribe
class DiceRoll(Task):
    def run(self):
        launch = random.randint(1, 6)
        return Result(uuid=self.uuid, stdout=f"You made a {launch}")


@oregistry.subscribe
class DiceLaunch(Operation):
    def build_tasks(self, **kwargs):
        return [DiceRoll(), DiceRoll(), DiceRoll()]


if __name__ == '__main__':
    import os
    from flask import Flask
    from kser.python_kafka.consumer import Consumer

    app = Flask(__name__)
    oregistry.init_app(app, api=False)  # a worker: binds the registry, serves no API
    cons = Consumer(
        config=dict(
            bootstrap_servers=os.environ.get("KSER_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            group_id=os.environ.get("KSER_GROUP", "dice-example"),
            auto_offset_reset="earliest",
        ),
        topics=[os.environ.get("KSER_TOPIC", "dice-example")],
    )
    cons.REGISTRY = oregistry.controller
    cons.run()
