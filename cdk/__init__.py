"""The AWS CDK app: one construct per capability, composed by `cdk/stack.py`.

`app.py` only builds the stack. Everything the stack shares with local mode (the table schemas,
the S3 notification filters, the Lambda settings, the pipelines) comes from `raylauncher`.
"""
