"""The baseline of bench/http_enqueue.py: `POST /jobs` written the tutorial way.

Flask and RQ as their tutorials show them: one module-level queue, `enqueue` the
function with the request's arguments, answer with the job's id. No validation,
no auth, no rate limits, RQ's default (pickle) serializer.
"""
import os

from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue

from jobs.demo import add

app = Flask(__name__)
queue = Queue(connection=Redis.from_url(os.environ["REDIS_URL"]))


@app.post("/jobs")
def enqueue():
    job = queue.enqueue(add, *request.json["args"])
    return jsonify({"id": job.id}), 202


@app.get("/health")
def health():
    return {"status": "ok"}
