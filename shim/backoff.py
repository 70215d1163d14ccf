"""
Capped exponential backoff with jitter, for everything the shim retries.
"""

import random


class Backoff:
    """
    The delays between attempts: C{initial}, doubling up to C{maximum}, each scaled by a
    random factor in [0.5, 1.0] so that several shims retrying together spread out.
    """

    def __init__(self, initial=0.1, maximum=5.0, random=random.random):
        self.initial = initial
        self.maximum = maximum
        self._random = random
        self.attempts = 0

    def next_delay(self):
        """
        The delay before the next attempt; each call counts one more failed attempt.
        """
        delay = min(self.maximum, self.initial * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return delay * (0.5 + self._random() / 2)

    def reset(self):
        """
        Start again from C{initial}, after a success.
        """
        self.attempts = 0
