"""`echoclr pretrain`: the SSL methods, their losses and the pretraining task."""
