"""Sources and sinks: every place blocks come from or go to, behind the pipeline's interfaces."""
