"""The AWS backend: S3 for objects and SQS for queues, through boto3.

Works with AWS and any S3/SQS-compatible endpoint. Credentials, region and endpoints come from
boto3's standard chain (``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL_SQS``) or the ``endpoint_url`` argument; never from our own arguments.
`_aws.Translate` is the one place botocore exceptions become remotejob errors, and it builds
messages from the endpoint, bucket, key and error code only, so no secret can leak into them.
"""

from __future__ import annotations

from ._aws import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, request_counts
from .aws_s3 import S3Store
from .aws_sqs import SqsQueues

__all__ = ["CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "S3Store", "SqsQueues", "request_counts"]
