"""The synthetic echo archive (`echoclr synth`)."""
