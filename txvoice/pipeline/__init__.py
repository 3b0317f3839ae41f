"""The voice pipeline: what a turn of audio becomes (echo now; speech-to-text, agent and text-to-speech later)."""
