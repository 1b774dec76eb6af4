"""The enqueue script: one round trip that decides and writes an enqueue."""
from service import queues
from service.admission import Admission
from service.job_view import describe


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
