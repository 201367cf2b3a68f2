"""`markroute run`: the daemon that keeps the applied config true while uplinks come and go.

Modules, in the order a failover passes through them:

* `markroute.probes` (a package of its own, below config): the probe methods, ICMP,
  TCP and ARP, pinned to their uplink (mark, device, source);
* `monitor`: rounds of probes on a schedule, per uplink;
* `uplinkstate`: each uplink's state machine (up, degraded, down) with hysteresis and
  flap damping;
* `netlink`: link, address and route events from the kernel, acted on at once;
* `failover`: the one-transaction chain rewrite and the conntrack clean-up;
  `hamove`: on a router of an HA pair, that clean-up only while it is master;
* `service`: the loop tying them together, signals, reload, resync;
  `control`: `markroute apply` handed to the running daemon over a unix socket;
* `metrics`, `hooks`, `logs`: what the daemon tells the world (Prometheus,
  `on_change`, journald; its records for `status` are in `kernel.state`), `reactor`:
  the single-threaded event loop.
"""
