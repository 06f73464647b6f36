"""Training the tiny Megrez2 shipped in checkpoints/tiny-trained: its generated corpus (tiny_corpus)
and the trainer (train_tiny). The top layer: it uses model/ and programs/ (answer extraction);
nothing else imports it."""
