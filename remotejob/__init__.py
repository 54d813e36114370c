"""remotejob: run jobs on remote machines, coordinated only through object storage and queues."""
