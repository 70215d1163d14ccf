"""
Ordered execution per object.

Backend calls for one object must run in event order, each waiting for the previous
one's Deferred, while calls for different objects proceed concurrently.  L{SerialQueues}
keeps one queue of jobs per key.  A job that returns a plain value costs no Deferred at
all, which keeps the event path cheap for the many events that call no backend.
"""

from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger


class SerialQueues:
    """
    Runs jobs one after another per key, concurrently across keys.

    A job is a callable; if it returns a L{Deferred}, the next job of the same key starts
    when that Deferred fires.  A job that raises or fails is logged and the next job runs:
    jobs are expected to handle their own errors, this is the last line of defence.
    """

    log = Logger()

    def __init__(self):
        self._queues = {}
        self._idle_waiters = []

    def __len__(self):
        """
        The number of keys with work queued or running.
        """
        return len(self._queues)

    def busy(self, key):
        """
        Whether a job for C{key} is running or queued.
        """
        return key in self._queues

    def submit(self, key, job, *args):
        """
        Run C{job(*args)} after every job submitted earlier for C{key}.
        """
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((job, args))
            return
        self._queues[key] = queue = deque()
        self._run(key, queue, job, args)

    def idle(self):
        """
        A Deferred that fires when no job is queued or running for any key.
        """
        d = Deferred()
        if not self._queues:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _run(self, key, queue, job, args):
        while True:
            try:
                result = job(*args)
            except Exception:
                self.log.failure("job {job!r} for {key} raised", job=job, key=key)
                result = None
            if isinstance(result, Deferred):
                if not result.called:
                    result.addErrback(self._failed, job, key)
                    result.addBoth(self._next, key, queue)
                    return
                result.addErrback(self._failed, job, key)
            if not queue:
                self._finish(key)
                return
            job, args = queue.popleft()

    def _failed(self, failure, job, key):
        self.log.failure("job {job!r} for {key} failed", failure, job=job, key=key)

    def _next(self, _, key, queue):
        if queue:
            job, args = queue.popleft()
            self._run(key, queue, job, args)
        else:
            self._finish(key)

    def _finish(self, key):
        del self._queues[key]
        if not self._queues and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
