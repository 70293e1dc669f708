"""SIS Sync: rostering from Clever and OneRoster into an LMS, as Airflow tasks.

Arrow allocates through the system allocator here, not its default mimalloc pool: the stages
take large tables part by part, and mimalloc keeps each part's freed buffers, so a task's
memory grew with every part (validating a large district's enrollments: 1.7 GB more). The
system allocator returns large buffers to the operating system when they are freed.
"""

import pyarrow as _pa

_pa.set_memory_pool(_pa.system_memory_pool())
