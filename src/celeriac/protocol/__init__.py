"""Celery's wire protocol, pure: no I/O, stdlib only (msgpack/yaml/orjson used when installed).

- ``serialization``: serializers (json with kombu's type tags, msgpack, yaml, pickle opt-in),
  compression, ``accept_content`` enforcement.
- ``message``: the protocol v2 task message (``TaskMessage``), v1 decoding.
- ``envelope``: ``RawMessage`` (headers, properties, body bytes) and kombu's Redis envelope JSON.
- ``result_meta``: ``celery-task-meta`` records and exception (de)serialisation.
"""
