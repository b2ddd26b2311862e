"""Read a JUnit XML report with junitparser (a JUnit consumer CI tools use) and print what it
saw as JSON: suites with their counts and properties, cases with their results."""
import json
import sys

from junitparser import Error, Failure, JUnitXml, Skipped

xml = JUnitXml.fromfile(sys.argv[1])
suites = []
for suite in xml:
    cases = []
    for case in suite:
        result, message, text = "passed", None, None
        for r in case.result:
            if isinstance(r, (Failure, Error, Skipped)):
                result = type(r).__name__.lower()
                message, text = r.message, r.text
        cases.append({"classname": case.classname, "name": case.name, "result": result,
                      "message": message, "text": text})
    suites.append({
        "name": suite.name, "tests": suite.tests, "failures": suite.failures,
        "errors": suite.errors, "skipped": suite.skipped, "time": suite.time,
        "properties": {p.name: p.value for p in suite.properties()},
        "system_out": out.text if (out := suite._elem.find("system-out")) is not None else None,
        "cases": cases,
    })
print(json.dumps({"name": xml.name, "tests": xml.tests, "failures": xml.failures,
                  "errors": xml.errors, "suites": suites}))
