"""The systems that MTA is compared with (`alter experiment`) that are not an `MTAModel`
configuration: a Bi-LSTM with attention trained from scratch, and lead sentences for summaries.
(The shared PEFT LoRA of the multi-task and single-task baselines is `alter.shared_lora`,
an option of `MTAModel`.)"""
