"""A fleet of fspd hosts working from one queue of jobs, on AWS services only.

SQS hands out the jobs (queue.py), DynamoDB holds one item per job with its owner, lease and
attempt number (table.py: the attempt is the fencing token every write is conditional on),
and S3 holds each job's checkpoint (checkpoints.py). setup.py creates or checks the three.
"""
