"""nft's own library, libnftables, kept open in this process for the daemon's failover batches.

`nft -j -f -` costs a process per transaction, 8 to 30 ms on a busy two-core machine,
nearly all of it nft starting up (a new libnftables context alone takes 8 to 16 ms);
the transaction itself, given an open context, takes about 0.1 ms. The daemon rewrites
its chains on the failover path, where every millisecond is traffic lost, so it keeps
one context (`Session`) and hands it the same JSON batch nft would read: the same
parser, cache, netlink transaction and error messages, without the process
(BENCHMARKS.md, "Daemon reaction"). Commands that run once keep using the nft process.

The library is reached through ctypes, as `netns` reaches setns(2): five functions of
its stable API. A context talks to nf_tables over a netlink socket of the network
namespace it was opened in, so a session refuses to run in another one (tests move
between namespaces in one process). Without libnftables (`open_session` returns None)
the daemon runs nft as a process, as before.
"""

from __future__ import annotations

import ctypes
import os

from markroute.kernel import KernelError

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # what `nft -j` sets: JSON in, JSON out


def _namespace() -> int:
    return os.stat("/proc/self/ns/net").st_ino


class Session:
    """One libnftables context, bound to the network namespace it was opened in."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.lib = library
        library.nft_ctx_new.restype = ctypes.c_void_p
        library.nft_ctx_new.argtypes = [ctypes.c_uint32]
        library.nft_ctx_free.argtypes = [ctypes.c_void_p]
        library.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        library.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        library.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        library.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        library.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        library.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        library.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        library.nft_run_cmd_from_buffer.restype = ctypes.c_int
        context = library.nft_ctx_new(NFT_CTX_DEFAULT)
        if not context:
            raise KernelError("libnftables: cannot create a context")
        self.context: int | None = context
        self.namespace = _namespace()
        library.nft_ctx_output_set_flags(context, NFT_CTX_OUTPUT_JSON)
        library.nft_ctx_buffer_output(context)  # kept, not printed on the daemon's stdout
        library.nft_ctx_buffer_error(context)

    def run(self, text: str) -> None:
        """Run TEXT (a JSON batch) as `nft -j -f -` would: one transaction; KernelError with nft's message."""
        if self.context is None:
            raise KernelError("libnftables: the session is closed")
        if _namespace() != self.namespace:
            raise KernelError("libnftables: the session belongs to another network namespace")
        code = self.lib.nft_run_cmd_from_buffer(self.context, text.encode())
        self.lib.nft_ctx_get_output_buffer(self.context)  # reading it empties it: a batch prints nothing worth keeping
        if code != 0:
            error = (self.lib.nft_ctx_get_error_buffer(self.context) or b"").decode(errors="replace")
            message = " ".join(line.strip() for line in error.splitlines() if line.strip())
            raise KernelError(f"nft: {message or f'the batch failed ({code})'}")

    def close(self) -> None:
        if self.context is not None:
            self.lib.nft_ctx_free(self.context)
            self.context = None


def open_session() -> Session | None:
    """A session in the current network namespace, or None when libnftables is not installed."""
    try:
        library = ctypes.CDLL(LIBRARY)
    except OSError:
        return None
    return Session(library)
