"""The systems that MTA is compared with (`alter experiment`) that are not an `MTAModel`
configuration: a Bi-LSTM with attention trained from scratch. (Lead sentences for summaries
are `alter.evaluate.trivial.lead`, a summary's trivial score; the shared PEFT LoRA of the
multi-task and single-task baselines is `alter.shared_lora`, an option of `MTAModel`.)"""
