"""callcancel for producers and operators: the `callcancel` command, `callcancel.publish`, `callcancel.status`,
and the DLQ tools. Never shipped in the Lambda layer: the functions run only `callcancel` (layers/callcancel/).
"""
