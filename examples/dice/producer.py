import logging
logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)-8s %(message)s"
)

import os
import uuid
from kser import Message
from kser.python_kafka.producer import Producer

pro = Producer(dict(bootstrap_servers=os.environ.get("KSER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")))
pro.send(os.environ.get("KSER_TOPIC", "dice-example"), Message(uuid=str(uuid.uuid4()), entrypoint="__main__.DiceRoll"))
