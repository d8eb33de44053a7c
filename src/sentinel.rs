//! The reboot sentinel: the signal that this node needs a reboot.
