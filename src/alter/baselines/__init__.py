"""The systems that MTA is compared with (`alter experiment`): a shared PEFT LoRA adapter,
a Bi-LSTM with attention trained from scratch, and lead sentences for summaries."""
