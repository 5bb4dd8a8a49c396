"""The one training loop and everything around it; families plug in as task modules."""
