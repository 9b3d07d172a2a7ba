"""What runs on the device: ``agent.py`` is one stdlib(+numpy+runtime) file uploaded by the host."""
