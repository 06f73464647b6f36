"""What Megrez2 is and how it is checked: its config, the plain-PyTorch reference, tokenizer, prompt
formats, checkpoint builder and parameter counts, and SGLang's output checked against the reference
(fidelity, routing peers, GPU branches). Imports nothing from serving/, programs/, training/."""
