"""The enqueue script: one round trip that decides and writes an enqueue."""
import pytest

from service import job_index, queues
from service.admission import Admission
from service.job_view import describe
from service.rate_limits import RateLimited, counter


def test_an_enqueue_sent_again_queues_its_job_once(connection):
    """The batcher sends its calls once more when a broken connection took their
    answers; Redis may have run them already, and a job queued twice runs twice."""
    queue = queues.queue("default", connection)
    job = queue.create_job(queues.job_registry().get("demo.add").func, args=[1, 2])
    job.origin = queue.name
    admission = Admission(connection)
    assert admission.enqueue([], job, queue.key, cap=100) == 0
    assert admission.enqueue([], job, queue.key, cap=100) is None
    assert connection.lrange(queue.key, 0, -1) == [job.id.encode()]
    # The answer to the resent call still says where the job is.
    assert describe(job, queues.job_registry())["position"] == 0


def test_a_count_sent_again_spends_its_limit_once(connection):
    """A job RQ writes itself (a start time, dependencies, a webhook) is counted
    against the rate limits first, in a call of its own, which is sent again as
    an enqueue is: the client's second request must not be refused for it."""
    queue = queues.queue("default", connection)
    add = queues.job_registry().get("demo.add").func
    job = queue.create_job(add, args=[1, 2])
    limit = counter("token:t", "2 per minute")
    admission = Admission(connection)
    admission.count([limit], job)
    admission.count([limit], job)  # the same call, sent again
    assert int(connection.get(limit.key)) == 1
    admission.count([limit], queue.create_job(add, args=[3, 4]))
    refused = queue.create_job(add, args=[5, 6])
    with pytest.raises(RateLimited):
        admission.count([limit], refused)
    assert int(connection.get(limit.key)) == 2
    assert connection.zscore(job_index.KEY, refused.id) is None, "a refused job is not listed"
