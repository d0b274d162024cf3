"""Datasets: labelled examples per split ("train", "dev"), kept in the state store, checked on the way in."""

from __future__ import annotations

import json
import re
import time

from dspy_pool import errors, structs
from dspy_pool.state import DatasetInfo, ExampleRecord, StateStore
from dspy_pool.state.unreachable import unavailable_while_down
from dspy_pool.v1 import dspy_pool_pb2 as pb

SPLITS = ("train", "dev")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def to_message(info: DatasetInfo) -> pb.Dataset:
    dataset = pb.Dataset(name=info.name, content_hash=info.content_hash, counts=dict(info.counts))
    dataset.updated_at.FromNanoseconds(int(info.updated_at * 1e9))
    return dataset


class Datasets:
    def __init__(self, store: StateStore, max_examples: int, max_example_bytes: int, max_depth: int,
                 max_datasets: int = 1000) -> None:
        self.store = store
        self.max_examples = max_examples
        self.max_example_bytes = max_example_bytes
        self.max_depth = max_depth
        self.max_datasets = max_datasets

    def _records(self, request: pb.AddExamplesRequest) -> list[ExampleRecord]:
        now = time.time()
        records = []
        for index, example in enumerate(request.examples):
            where = f"examples[{index}]"
            if example.ByteSize() > self.max_example_bytes:
                raise errors.InvalidArgument(f"{where} is {example.ByteSize()} bytes; the limit is {self.max_example_bytes}")
            for part in ("inputs", "outputs"):
                message = getattr(example, part)
                if not message.fields:
                    raise errors.InvalidArgument(f"{where}.{part} is empty: an example needs inputs and expected outputs")
                try:
                    structs.check_struct(message, self.max_depth, f"{where}.{part}")
                except ValueError as exc:
                    raise errors.InvalidArgument(str(exc)) from None
            records.append(ExampleRecord(json.dumps(structs.struct_to_dict(example.inputs), ensure_ascii=False),
                                         json.dumps(structs.struct_to_dict(example.outputs), ensure_ascii=False), "client", now))
        return records

    async def add(self, request: pb.AddExamplesRequest) -> pb.Dataset:
        if not NAME_PATTERN.fullmatch(request.dataset):
            raise errors.InvalidArgument(f"dataset name {request.dataset!r} must match {NAME_PATTERN.pattern}")
        if request.split not in SPLITS:
            raise errors.InvalidArgument(f"split {request.split!r} must be train or dev")
        if not request.examples:
            raise errors.InvalidArgument("no examples given")
        records = self._records(request)
        async with unavailable_while_down("examples were not added"):
            await self._check_room(request.dataset)
            info = await self.store.add_examples(request.dataset, request.split, records, self.max_examples)
        return to_message(info)

    async def _check_room(self, name: str) -> None:
        """A new dataset only while there are fewer than max_datasets (one client made 20,000 in 7 s, each able to hold
        max_examples). Counted when a dataset is created, so it is approximate across replicas: a bound, not a quota."""
        if await self.store.get_dataset(name) is not None:
            return
        count = len(await self.store.list_datasets())
        if count >= self.max_datasets:
            raise errors.ResourceExhausted(f"{count} datasets exist (limit {self.max_datasets}, --max-datasets): "
                                           "delete ones no longer needed, or add to an existing one")

    async def get(self, name: str) -> pb.Dataset:
        info = await self._call(self.store.get_dataset(name))
        if info is None:
            raise errors.NotFound(f"no dataset named {name!r}")
        return to_message(info)

    async def list(self) -> list[pb.Dataset]:
        return [to_message(info) for info in await self._call(self.store.list_datasets())]

    async def delete(self, name: str) -> bool:
        if not await self._call(self.store.delete_dataset(name)):
            raise errors.NotFound(f"no dataset named {name!r}")
        return True

    async def _call(self, awaitable):
        async with unavailable_while_down("datasets cannot be read or changed until it is back"):
            return await awaitable
