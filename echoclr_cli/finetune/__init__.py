"""`echoclr finetune`: the binary and multi-class classification tasks."""
