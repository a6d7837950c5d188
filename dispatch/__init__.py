"""Pure dispatch core: matching, lifecycles and simulation. No I/O, no Ray, no wall clock."""
