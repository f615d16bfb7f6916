"""The course around the book: students' checks, the student versions of the exercises, and grading.

* :mod:`~esa_tutorial.course.checks`: ``check_ppm(my_ppm)`` and friends, feedback for students;
* :mod:`~esa_tutorial.course.release`: the student version of an exercise notebook;
* :mod:`~esa_tutorial.course.grading`, :mod:`~esa_tutorial.course.sandbox`,
  :mod:`~esa_tutorial.course.runner`, :mod:`~esa_tutorial.course.tape`: grading submissions;
* ``python -m esa_tutorial.course release OUT`` / ``grade SUBMISSIONS``: the command line.

The course depends on the model library (``esa_tutorial``); the library never imports the course.
"""
