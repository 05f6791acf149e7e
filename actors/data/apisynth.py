"""Rule-made function-calling exchanges over a hand-written pool of API functions (APIGen/xLAM's recipe in
miniature: typed functions with described parameters, requests built from templates, calls checked against the
schema), so the tool mix is not limited to the ~60 functions of the shared glaive rows.

Each function (`Fn`) has typed parameters with descriptions (some with enums, defaults or a value format such as
"City, Country"), request templates `asks` around one `clause` that spells the arguments ("a 3 kg object moving at
4 m/s"); `[...]` in a clause is an optional argument's phrase, kept only when that argument is given. From these:
- `exchanges(n, rng)`: single-call exchanges in `toolmix.single_calls`' shape, so every toolmix composer (multiple,
  parallel, parallel_multiple, irrelevance) draws from them as from glaive's;
- `parallel_clauses(n, rng)`: one request listing several argument sets of one function ("the kinetic energy of a
  3 kg object at 4 m/s and of a 5 kg object at 2 m/s"), one call per set, as a request with several full argument
  sets asks;
- `near_misses(n, rng)`: a request offered only functions of its own domain that cannot answer it (the area of a
  circle, offered the volume of a sphere and the perimeter of a square), answered without a call.

The pool is written for this module; no benchmark row or function was copied. Pure Python (no torch, no Ray).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

Gen = Callable[[random.Random], Any]


def _int(lo: int, hi: int) -> Gen:
    return lambda r: r.randint(lo, hi)


def _num(lo: float, hi: float, digits: int = 1) -> Gen:
    """A float with `digits` decimals, or a whole number one time in three (people write "5 m", not "5.0 m")."""
    def g(r: random.Random):
        v = round(r.uniform(lo, hi), digits)
        return int(v) if (r.random() < 1 / 3 and int(v) > 0) or v == int(v) else v
    return g


def _pick(*vals) -> Gen:
    return lambda r: r.choice(vals)


def _ints(k_lo: int, k_hi: int, lo: int, hi: int) -> Gen:
    return lambda r: [r.randint(lo, hi) for _ in range(r.randint(k_lo, k_hi))]


@dataclass
class P:
    name: str
    type: str                      # JSON schema: integer | number | string | boolean | array
    desc: str
    gen: Gen
    required: bool = True
    enum: list | None = None
    items: str | None = None       # array item type
    props: dict | None = None      # object: {key: (JSON type, enum or None)}; every key given
    default: Any = None
    show: Callable[[Any], str] | None = None   # how the request spells a value (default: str)


@dataclass
class Fn:
    name: str
    desc: str
    params: list[P]
    asks: list[str]                # templates with {clause}
    clause: str                    # {param} slots; [...] optional phrases
    domain: str
    extra: dict = field(default_factory=dict)

    def spec(self) -> dict:
        props, req = {}, []
        for p in self.params:
            s: dict = {"type": p.type, "description": p.desc}
            if p.enum:
                s["enum"] = list(p.enum)
            if p.items:
                s["items"] = {"type": p.items}
            if p.props:
                s["properties"] = {k: {"type": t, **({"enum": list(e)} if e else {})} for k, (t, e) in p.props.items()}
                s["required"] = list(p.props)
            if p.default is not None:
                s["default"] = p.default
                s["description"] = f"{p.desc} Default {p.default}."
            props[p.name] = s
            if p.required:
                req.append(p.name)
        return {"type": "function", "function": {"name": self.name, "description": self.desc,
                                                 "parameters": {"type": "object", "properties": props,
                                                                "required": req}}}


_CITIES = [("Paris", "France"), ("Tokyo", "Japan"), ("Nairobi", "Kenya"), ("Lima", "Peru"), ("Oslo", "Norway"),
           ("Hanoi", "Vietnam"), ("Cairo", "Egypt"), ("Madrid", "Spain"), ("Toronto", "Canada"),
           ("Sydney", "Australia"), ("Mumbai", "India"), ("Berlin", "Germany"), ("Seoul", "South Korea"),
           ("Lisbon", "Portugal"), ("Bogota", "Colombia"), ("Dublin", "Ireland"), ("Prague", "Czech Republic")]
_US = [("Austin", "TX"), ("Denver", "CO"), ("Seattle", "WA"), ("Boston", "MA"), ("Miami", "FL"), ("Chicago", "IL"),
       ("Portland", "OR"), ("Phoenix", "AZ"), ("Atlanta", "GA"), ("Nashville", "TN")]
_PLACES = [f"{c}, {k}" for c, k in _CITIES + _US]
_TICKERS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "IBM", "ORCL", "INTC", "NFLX", "SAP"]
_CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CNY", "INR", "CAD", "CHF", "AUD"]
_LANGS = ["French", "German", "Spanish", "Japanese", "Italian", "Korean", "Portuguese"]
_PHRASES = ["good morning", "where is the station", "thank you very much", "the meeting is at noon",
            "I would like a coffee", "see you tomorrow", "how much does this cost"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_COUNTRIES = ["Brazil", "Kenya", "Japan", "Canada", "Norway", "India", "Mexico", "Egypt", "Chile", "Poland"]
_TEAMS = ["Lakers", "Celtics", "Warriors", "Bulls", "Heat", "Knicks", "Spurs", "Suns"]
_CUISINES = ["Italian", "Thai", "Mexican", "Indian", "Japanese", "Greek", "Ethiopian"]
_GENRES = ["comedy", "drama", "horror", "documentary", "animation", "thriller"]
_ELEMENTS = ["carbon", "oxygen", "iron", "gold", "sodium", "helium", "copper", "zinc"]
_AUTHORS_TOPICS = ["renewable energy", "black holes", "ancient Rome", "machine learning", "coral reefs",
                   "the French Revolution", "climate change", "quantum computing"]


def _date(r: random.Random) -> str:
    return f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def _dollars(v) -> str:
    """How people write money: "$150,000", "$1.2 million"; the argument stays the plain number."""
    if isinstance(v, int) and v >= 1_000_000 and v % 100_000 == 0:
        return f"${v / 1_000_000:g} million"
    return f"${v:,}"


def _words(v: str) -> str:
    return v.lower().replace("_", " ")   # "FLAT_WHITE" -> "flat white"


def _city_show(v: str) -> str:
    return v.split(",")[0]   # requests name the city alone; the argument carries the format the spec asks for


FUNCTIONS: list[Fn] = [
    # --- arithmetic and number theory
    Fn("number_theory.gcd", "Greatest common divisor of two integers.",
       [P("a", "integer", "The first integer.", _int(6, 480)), P("b", "integer", "The second integer.", _int(6, 480))],
       ["What is the greatest common divisor of {clause}?", "Find the GCD of {clause}."], "{a} and {b}", "math"),
    Fn("number_theory.lcm", "Least common multiple of two integers.",
       [P("a", "integer", "The first integer.", _int(2, 60)), P("b", "integer", "The second integer.", _int(2, 60))],
       ["What is the least common multiple of {clause}?", "Find the LCM of {clause}."], "{a} and {b}", "math"),
    Fn("factorial", "Compute n! for a non-negative integer n.",
       [P("n", "integer", "The non-negative integer.", _int(3, 20))],
       ["What is the factorial of {clause}?", "Compute {clause} factorial."], "{n}", "math"),
    Fn("is_prime", "Check whether an integer is a prime number.",
       [P("number", "integer", "The integer to test.", _int(11, 9999))],
       ["Is {clause} a prime number?", "Check if {clause} is prime."], "{number}", "math"),
    Fn("prime_factorize", "List the prime factors of an integer.",
       [P("number", "integer", "The integer to factor, at least 2.", _int(12, 5000)),
        P("unique", "boolean", "Return each prime once instead of with multiplicity.", _pick(True), required=False)],
       ["What are the prime factors of {clause}?", "Factorize {clause} into primes."], "{number}[ (each prime once{unique})]", "math",
       extra={"hide": {"unique"}}),
    Fn("fibonacci_sequence", "The first n Fibonacci numbers.",
       [P("count", "integer", "How many Fibonacci numbers to return.", _int(5, 30))],
       ["List the first {clause} Fibonacci numbers.", "Give me {clause} terms of the Fibonacci sequence."], "{count}", "math"),
    Fn("binomial_coefficient", "Number of ways to choose k items from n (n choose k).",
       [P("n", "integer", "Total number of items.", _int(5, 40)), P("k", "integer", "Items chosen.", _int(1, 5))],
       ["How many ways are there to choose {clause}?", "Compute the binomial coefficient for choosing {clause}."],
       "{k} items from {n}", "math"),
    Fn("solve_linear_equation", "Solve a*x + b = c for x.",
       [P("a", "number", "Coefficient of x.", _int(2, 12)), P("b", "number", "Constant on the left side.", _int(-30, 30)),
        P("c", "number", "Right-hand side.", _int(-50, 90))],
       ["Solve {clause} for x.", "What x satisfies {clause}?"], "{a}x + {b} = {c}", "math"),
    Fn("math.power", "Raise a base to an exponent, optionally modulo m.",
       [P("base", "integer", "The base.", _int(2, 15)), P("exponent", "integer", "The exponent.", _int(2, 12)),
        P("mod", "integer", "Modulus to reduce the result by.", _int(7, 101), required=False)],
       ["What is {clause}?", "Compute {clause}."], "{base} to the power {exponent}[ modulo {mod}]", "math"),
    Fn("logarithm", "Logarithm of a positive number in a given base.",
       [P("value", "number", "The positive number.", _int(2, 10000)),
        P("base", "number", "The base of the logarithm.", _pick(2, 10, 3, 5), required=False, default=10)],
       ["What is the logarithm of {clause}?", "Compute the log of {clause}."], "{value}[ in base {base}]", "math"),
    # --- statistics
    Fn("statistics.mean", "Arithmetic mean of a list of numbers.",
       [P("numbers", "array", "The numbers to average.", _ints(3, 6, 1, 99), items="number",
          show=lambda v: ", ".join(map(str, v)))],
       ["What is the average of {clause}?", "Find the mean of {clause}."], "{numbers}", "stats"),
    Fn("statistics.median", "Median of a list of numbers.",
       [P("data", "array", "The list of numbers.", _ints(3, 7, 1, 99), items="number", show=lambda v: ", ".join(map(str, v)))],
       ["What is the median of {clause}?", "Find the median value of {clause}."], "{data}", "stats"),
    Fn("standard_deviation", "Standard deviation of a sample or population.",
       [P("values", "array", "The data points.", _ints(4, 7, 1, 60), items="number", show=lambda v: ", ".join(map(str, v))),
        P("population", "boolean", "True for the population formula, false for the sample one.", _pick(True),
          required=False, default=False)],
       ["What is the standard deviation of {clause}?", "Compute the spread (standard deviation) of {clause}."],
       "{values}[ as a whole population{population}]", "stats", extra={"hide": {"population"}}),
    Fn("probability.dice_sum", "Probability of rolling a given total with several fair dice.",
       [P("target", "integer", "The total to roll.", _int(4, 14)), P("dice", "integer", "Number of dice.", _int(2, 3)),
        P("sides", "integer", "Faces per die.", _pick(6, 8, 12), required=False, default=6)],
       ["What is the probability of {clause}?", "How likely is {clause}?"],
       "rolling a total of {target} with {dice} dice[ of {sides} sides]", "stats"),
    # --- geometry
    Fn("geometry.circle_area", "Area of a circle from its radius.",
       [P("radius", "number", "Radius of the circle.", _num(1, 40)),
        P("units", "string", "Length unit of the radius.", _pick("cm", "m", "inches"), required=False)],
       ["What is the area of {clause}?", "Find the area of {clause}."], "a circle with radius {radius}[ {units}]", "geometry"),
    Fn("geometry.rectangle_perimeter", "Perimeter of a rectangle.",
       [P("length", "number", "Length of the rectangle.", _num(1, 90)), P("width", "number", "Width of the rectangle.", _num(1, 60))],
       ["What is the perimeter of {clause}?", "Compute the perimeter of {clause}."],
       "a rectangle {length} long and {width} wide", "geometry"),
    Fn("sphere_volume", "Volume of a sphere.",
       [P("radius", "number", "Radius of the sphere.", _num(1, 30))],
       ["What is the volume of {clause}?", "Calculate the volume of {clause}."], "a sphere of radius {radius}", "geometry"),
    Fn("cylinder_surface_area", "Total surface area of a closed cylinder.",
       [P("radius", "number", "Radius of the base.", _num(1, 20)), P("height", "number", "Height of the cylinder.", _num(1, 50))],
       ["What is the surface area of {clause}?", "Find the total surface area of {clause}."],
       "a cylinder with radius {radius} and height {height}", "geometry"),
    Fn("distance_between_points", "Euclidean distance between two points in the plane.",
       [P("point_a", "array", "First point as [x, y].", _ints(2, 2, -20, 20), items="number",
          show=lambda v: f"({v[0]}, {v[1]})"),
        P("point_b", "array", "Second point as [x, y].", _ints(2, 2, -20, 20), items="number",
          show=lambda v: f"({v[0]}, {v[1]})")],
       ["What is the distance between {clause}?", "How far apart are {clause}?"], "{point_a} and {point_b}", "geometry"),
    Fn("polygon.interior_angle", "Interior angle of a regular polygon in degrees.",
       [P("sides", "integer", "Number of sides, at least 3.", _int(3, 20))],
       ["What is each interior angle of {clause}?", "Find the interior angle of {clause}."],
       "a regular polygon with {sides} sides", "geometry"),
    # --- physics
    Fn("physics.kinetic_energy", "Kinetic energy of a moving object in joules.",
       [P("mass", "number", "Mass in kilograms.", _num(0.5, 90)), P("velocity", "number", "Speed in meters per second.", _num(1, 60))],
       ["What is the kinetic energy of {clause}?", "Calculate the kinetic energy of {clause}."],
       "a {mass} kg object moving at {velocity} m/s", "physics"),
    Fn("physics.net_force", "Force from mass and acceleration (Newton's second law), in newtons.",
       [P("mass", "number", "Mass in kilograms.", _num(1, 500)), P("acceleration", "number", "Acceleration in m/s^2.", _num(0.5, 20))],
       ["What force is needed to accelerate {clause}?", "Compute the net force on {clause}."],
       "a {mass} kg mass at {acceleration} m/s^2", "physics"),
    Fn("final_velocity", "Final velocity under constant acceleration.",
       [P("initial_velocity", "number", "Starting velocity in m/s.", _num(0, 30)),
        P("acceleration", "number", "Acceleration in m/s^2.", _num(0.5, 12)), P("time", "number", "Elapsed time in seconds.", _num(1, 60))],
       ["What is the final velocity of {clause}?", "How fast is {clause} at the end?"],
       "an object starting at {initial_velocity} m/s accelerating at {acceleration} m/s^2 for {time} s", "physics"),
    Fn("ohms_law.voltage", "Voltage across a resistor from current and resistance.",
       [P("current", "number", "Current in amperes.", _num(0.1, 20, 2)), P("resistance", "number", "Resistance in ohms.", _num(1, 1000))],
       ["What is the voltage across {clause}?", "Find the voltage for {clause}."],
       "a {resistance} ohm resistor carrying {current} A", "physics"),
    Fn("wave.frequency", "Frequency of a wave from its speed and wavelength.",
       [P("speed", "number", "Wave speed in m/s.", _pick(343, 1500, 300000000)), P("wavelength", "number", "Wavelength in meters.", _num(0.1, 20, 2))],
       ["What is the frequency of {clause}?", "Compute the frequency of {clause}."],
       "a wave travelling at {speed} m/s with wavelength {wavelength} m", "physics"),
    Fn("gravity.free_fall_time", "Time for an object to fall from a height, ignoring air resistance.",
       [P("height", "number", "Drop height in meters.", _num(1, 400)),
        P("gravity", "number", "Gravitational acceleration in m/s^2.", _pick(1.62, 3.71, 24.79), required=False, default=9.81)],
       ["How long does it take {clause}?", "Compute the fall time for {clause}."],
       "an object to fall {height} m[ where gravity is {gravity} m/s^2]", "physics"),
    Fn("thermo.heat_energy", "Heat needed to warm a substance: mass times specific heat times temperature change.",
       [P("mass", "number", "Mass in grams.", _num(10, 2000)), P("specific_heat", "number", "Specific heat in J/(g*K).", _pick(4.18, 0.9, 0.45, 0.385)),
        P("delta_t", "number", "Temperature change in kelvin.", _num(1, 80))],
       ["How much heat is needed to warm {clause}?", "Compute the heat energy to raise {clause}."],
       "{mass} g of material with specific heat {specific_heat} by {delta_t} K", "physics"),
    # --- chemistry
    Fn("chemistry.molar_mass", "Molar mass of a chemical formula in g/mol.",
       [P("formula", "string", "Chemical formula, e.g. H2O.", _pick("H2O", "CO2", "NaCl", "C6H12O6", "NH3", "CH4", "H2SO4"))],
       ["What is the molar mass of {clause}?", "Find the molecular weight of {clause}."], "{formula}", "chemistry"),
    Fn("element_properties", "Look up properties of a chemical element.",
       [P("element", "string", "Element name.", _pick(*_ELEMENTS)),
        P("property", "string", "Which property to return.", _pick("atomic_number", "melting_point", "density"),
          enum=["atomic_number", "melting_point", "density", "atomic_mass"], required=False,
          show=lambda v: v.replace("_", " "))],
       ["Look up the {clause}.", "Tell me the {clause}."], "[{property} of ]{element}", "chemistry",
       extra={"bare": "properties of {element}"}),
    Fn("ideal_gas.pressure", "Pressure of an ideal gas from moles, temperature and volume.",
       [P("moles", "number", "Amount of gas in moles.", _num(0.1, 10, 2)), P("temperature", "number", "Temperature in kelvin.", _num(200, 600)),
        P("volume", "number", "Volume in liters.", _num(0.5, 50))],
       ["What is the pressure of {clause}?", "Compute the pressure of {clause}."],
       "{moles} mol of gas at {temperature} K in {volume} L", "chemistry"),
    # --- finance
    Fn("finance.compound_interest", "Future value of an investment with compound interest.",
       [P("principal", "number", "Initial amount.", _pick(1000, 2500, 5000, 12000, 750, 200000), show=_dollars),
        P("annual_rate", "number", "Yearly interest rate as a decimal (5% is 0.05).", _pick(0.03, 0.05, 0.04, 0.07, 0.025),
          show=lambda v: f"{round(v * 100, 1):g}%"),
        P("years", "integer", "Number of years.", _int(1, 30)),
        P("compounds_per_year", "integer", "How often interest is compounded per year.", _pick(12, 4, 365), required=False, default=1)],
       ["How much will {clause} be worth?", "What is the future value of {clause}?"],
       "{principal} at {annual_rate} for {years} years[ compounded {compounds_per_year} times a year]", "finance"),
    Fn("loan.monthly_payment", "Monthly payment of a fixed-rate loan.",
       [P("amount", "number", "Loan principal.", _pick(20000, 150000, 300000, 8000, 1200000), show=_dollars),
        P("rate", "number", "Annual interest rate in percent.", _pick(3.5, 4.2, 6, 7.9)),
        P("term_years", "integer", "Loan term in years.", _pick(5, 15, 30, 10))],
       ["What is the monthly payment on {clause}?", "Compute the monthly installment for {clause}."],
       "a {amount} loan at {rate}% over {term_years} years", "finance"),
    Fn("calc_tip", "Tip amount for a bill.",
       [P("bill", "number", "The bill total.", _num(8, 300, 2), show=_dollars), P("percent", "number", "Tip percentage.", _pick(10, 15, 18, 20, 25))],
       ["How much should I tip on {clause}?", "Work out the tip for {clause}."], "a {bill} bill at {percent} percent", "finance"),
    Fn("stock_quote", "Latest or historical price of a stock.",
       [P("ticker", "string", "Stock ticker symbol, e.g. AAPL.", _pick(*_TICKERS)),
        P("date", "string", "Date as YYYY-MM-DD; today when omitted.", _date, required=False)],
       ["What is the stock price of {clause}?", "Get me the share price of {clause}."], "{ticker}[ on {date}]", "finance"),
    Fn("currency.convert", "Convert an amount between currencies at the current rate.",
       [P("amount", "number", "Amount to convert.", _pick(10, 50, 250, 1000, 75.5)),
        P("from_currency", "string", "ISO code of the source currency.", _pick(*_CURRENCIES)),
        P("to_currency", "string", "ISO code of the target currency.", _pick(*_CURRENCIES))],
       ["Convert {clause}.", "How much is {clause}?"], "{amount} {from_currency} to {to_currency}", "finance"),
    Fn("roi_percent", "Return on investment in percent.",
       [P("gain", "number", "Final value of the investment.", _pick(1200, 5400, 980, 15000, 2500000), show=_dollars),
        P("cost", "number", "Amount invested.", _pick(1000, 5000, 800, 12000, 2000000), show=_dollars)],
       ["What is the return on investment for {clause}?", "Compute the ROI of {clause}."],
       "an investment of {cost} that became {gain}", "finance"),
    # --- units
    Fn("convert_temperature", "Convert a temperature between units.",
       [P("value", "number", "The temperature.", _num(-30, 120)),
        P("from_unit", "string", "Unit of the value.", _pick("celsius", "fahrenheit", "kelvin"), enum=["celsius", "fahrenheit", "kelvin"]),
        P("to_unit", "string", "Unit to convert to.", _pick("fahrenheit", "celsius", "kelvin"), enum=["celsius", "fahrenheit", "kelvin"])],
       ["Convert {clause}.", "What is {clause}?"], "{value} degrees {from_unit} to {to_unit}", "units"),
    Fn("units.length", "Convert a length between units.",
       [P("value", "number", "The length.", _num(1, 500)),
        P("from_unit", "string", "Unit of the value.", _pick("miles", "km", "feet", "meters"), enum=["km", "miles", "meters", "feet"]),
        P("to_unit", "string", "Unit to convert to.", _pick("km", "miles", "meters", "feet"), enum=["km", "miles", "meters", "feet"])],
       ["Convert {clause}.", "How many {to_unit} is {value} {from_unit}?"], "{value} {from_unit} to {to_unit}", "units"),
    # --- everyday services
    Fn("weather.current", "Current weather for a location.",
       [P("location", "string", "City and country, or 'City, ST' for US cities, e.g. 'Lyon, France' or 'Reno, NV'.",
          _pick(*_PLACES), show=_city_show),
        P("unit", "string", "Temperature unit.", _pick("celsius", "fahrenheit"), enum=["celsius", "fahrenheit"], required=False)],
       ["What's the weather like in {clause}?", "Tell me the current weather in {clause}."], "{location}[ in {unit}]", "travel"),
    Fn("weather.forecast", "Daily weather forecast for the next days.",
       [P("city", "string", "City and country, e.g. 'Lyon, France'; 'City, ST' in the US.", _pick(*_PLACES), show=_city_show),
        P("days", "integer", "Number of days ahead, 1 to 10.", _int(2, 10))],
       ["What is the forecast for {clause}?", "Give me the weather forecast for {clause}."], "the next {days} days in {city}", "travel"),
    Fn("flights.search", "Search flights between two cities on a date.",
       [P("origin", "string", "Departure city.", _pick(*[c for c, _ in _CITIES])),
        P("destination", "string", "Arrival city.", _pick(*[c for c, _ in _CITIES])),
        P("date", "string", "Departure date, YYYY-MM-DD.", _date),
        P("cabin", "string", "Cabin class.", _pick("economy", "business"), enum=["economy", "premium", "business", "first"], required=False)],
       ["Find flights from {clause}.", "Search for a flight from {clause}."], "{origin} to {destination} on {date}[ in {cabin}]", "travel"),
    Fn("hotel_booking.search", "Find hotels in a city for given dates.",
       [P("city", "string", "City and country, e.g. 'Lyon, France'.", _pick(*[f"{c}, {k}" for c, k in _CITIES]), show=_city_show),
        P("check_in", "string", "Check-in date, YYYY-MM-DD.", _date), P("nights", "integer", "Number of nights.", _int(1, 14)),
        P("max_price", "number", "Highest nightly price.", _pick(100, 150, 200, 80), required=False)],
       ["Find me a hotel in {clause}.", "Look for hotels in {clause}."], "{city} from {check_in} for {nights} nights[ under {max_price} a night]", "travel"),
    Fn("restaurants.find", "Find restaurants near a location.",
       [P("location", "string", "City and country, or 'City, ST' in the US.", _pick(*_PLACES), show=_city_show),
        P("cuisine", "string", "Type of food.", _pick(*_CUISINES)),
        P("open_now", "boolean", "Only places open now.", _pick(True), required=False)],
       ["Find {clause}.", "Are there any good {clause}?"], "{cuisine} restaurants in {location}[ that are open now{open_now}]", "travel",
       extra={"hide": {"open_now"}}),
    Fn("timezone.local_time", "Current local time in a city.",
       [P("city", "string", "City and country, e.g. 'Lyon, France'.", _pick(*[f"{c}, {k}" for c, k in _CITIES]), show=_city_show)],
       ["What time is it in {clause}?", "Tell me the local time in {clause}."], "{city}", "travel"),
    Fn("translate_text", "Translate text into another language.",
       [P("text", "string", "The text to translate.", _pick(*_PHRASES), show=lambda v: f"'{v}'"),
        P("target_language", "string", "Language to translate into.", _pick(*_LANGS))],
       ["Translate {clause}.", "How do you say {clause}?"], "{text} into {target_language}", "language"),
    Fn("dictionary.define", "Definition of an English word.",
       [P("word", "string", "The word to define.", _pick("serendipity", "ephemeral", "ubiquitous", "laconic", "quixotic"))],
       ["What does {clause} mean?", "Define {clause}."], "{word}", "language"),
    Fn("news.headlines", "Recent news headlines on a topic.",
       [P("topic", "string", "Subject to search news for.", _pick(*_AUTHORS_TOPICS)),
        P("limit", "integer", "How many headlines.", _int(3, 10), required=False, default=5)],
       ["Show me the latest news about {clause}.", "Get news headlines on {clause}."], "{topic}[, {limit} stories]", "media"),
    Fn("movies.showtimes", "Cinema showtimes for a genre in a city on a date.",
       [P("city", "string", "City and country, or 'City, ST' in the US.", _pick(*_PLACES), show=_city_show),
        P("genre", "string", "Film genre.", _pick(*_GENRES)), P("date", "string", "Date, YYYY-MM-DD.", _date)],
       ["Find showtimes for {clause}.", "What {clause} can I watch?"], "{genre} films in {city} on {date}", "media"),
    Fn("books.search", "Search books by subject.",
       [P("subject", "string", "What the books are about.", _pick(*_AUTHORS_TOPICS)),
        P("year_from", "integer", "Earliest publication year.", _int(1990, 2024), required=False)],
       ["Find books about {clause}.", "Recommend books on {clause}."], "{subject}[ published since {year_from}]", "media"),
    Fn("sports.team_record", "Win/loss record of a basketball team in a season.",
       [P("team", "string", "Team name.", _pick(*_TEAMS)), P("season", "integer", "Season's starting year.", _int(2005, 2024))],
       ["What was the record of {clause}?", "How did {clause} do?"], "the {team} in the {season} season", "sports"),
    Fn("country.population", "Population of a country in a given year.",
       [P("country", "string", "Country name.", _pick(*_COUNTRIES)), P("year", "integer", "The year.", _int(1960, 2023))],
       ["What was the population of {clause}?", "How many people lived in {clause}?"], "{country} in {year}", "geography"),
    Fn("smart_home.set_climate", "Set an air conditioner's mode, target temperature and fan speed.",
       [P("settings", "object", "The settings to apply.",
          lambda r: {"mode": r.choice(["cool", "heat", "dry", "fan"]), "temperature": r.randint(16, 28),
                     "fan_speed": r.choice(["low", "medium", "high"])},
          props={"mode": ("string", ["cool", "heat", "dry", "fan"]), "temperature": ("integer", None),
                 "fan_speed": ("string", ["low", "medium", "high"])}),
        P("room", "string", "Room the unit is in.", _pick("bedroom", "living room", "office", "kitchen"), required=False)],
       ["Set the {clause}.", "Please switch the {clause}."],
       "[{room} ]air conditioner to {settings.mode} mode at {settings.temperature} degrees with {settings.fan_speed} fan",
       "home"),
    # API-style enums (UPPER_SNAKE) that requests name in plain words: the value comes from the request, not
    # from the enum's first entry
    Fn("laundry.start_cycle", "Start a washing machine cycle.",
       [P("cycle", "string", "Wash programme.", _pick("NORMAL", "DELICATE", "HEAVY_DUTY", "QUICK_WASH", "BEDDING"),
          enum=["NORMAL", "DELICATE", "HEAVY_DUTY", "QUICK_WASH", "BEDDING"], show=_words),
        P("water_temp", "string", "Water temperature.", _pick("COLD", "WARM", "HOT"), enum=["HOT", "WARM", "COLD"],
          show=_words),
        P("extra_rinse", "boolean", "Add a second rinse.", _pick(True), required=False)],
       ["Start a {clause}.", "Run the washer on a {clause}."],
       "{cycle} cycle in {water_temp} water[ with an extra rinse{extra_rinse}]", "home",
       extra={"hide": {"extra_rinse"}}),
    Fn("coffee_machine.brew", "Brew a drink on the office coffee machine.",
       [P("drink", "string", "The drink.", _pick("ESPRESSO", "AMERICANO", "LATTE", "CAPPUCCINO", "FLAT_WHITE"),
          enum=["AMERICANO", "CAPPUCCINO", "ESPRESSO", "FLAT_WHITE", "LATTE"], show=_words),
        P("size", "string", "Cup size.", _pick("SMALL", "MEDIUM", "LARGE"), enum=["LARGE", "MEDIUM", "SMALL"], show=_words),
        P("shots", "integer", "Espresso shots.", _int(1, 3), required=False, default=1)],
       ["Make me a {clause}.", "Could you brew a {clause}?"], "{size} {drink}[ with {shots} shots]", "home"),
    Fn("vacuum.start", "Start the robot vacuum.",
       [P("mode", "string", "Cleaning mode.", _pick("AUTO", "SPOT", "EDGE", "MOP"), enum=["AUTO", "EDGE", "MOP", "SPOT"],
          show=_words),
        P("power", "string", "Suction power.", _pick("QUIET", "STANDARD", "MAX"), enum=["STANDARD", "MAX", "QUIET"],
          show=_words)],
       ["Run the robot vacuum in {clause}.", "Start the vacuum: {clause}."], "{mode} mode at {power} power", "home"),
    Fn("shop.search_products", "Search an online store's catalogue.",
       [P("category", "string", "Product category, e.g. 'running shoes'.", _pick("running shoes", "backpacks", "headphones", "rain jackets", "desk lamps")),
        P("brand", "string", "Brand name.", _pick("Acme", "Northpeak", "Solace", "Vireo"), required=False),
        P("colors", "array", "Acceptable colours.", lambda r: r.sample(["red", "blue", "black", "green", "white"], r.randint(1, 2)),
          items="string", required=False, show=lambda v: " or ".join(v)),
        P("max_price", "number", "Highest price in dollars.", _pick(50, 80, 120, 200), required=False),
        P("in_stock", "boolean", "Only items in stock.", _pick(True), required=False)],
       ["Find {clause}.", "Show me {clause}."],
       "[{brand} ]{category}[ in {colors}][ under {max_price} dollars][ that are in stock{in_stock}]", "shopping",
       extra={"hide": {"in_stock"}}),
    Fn("food_delivery.order", "Order food from a restaurant for delivery.",
       [P("restaurant", "string", "Restaurant name.", _pick("Luigi's", "Golden Dragon", "Taco Town", "Burger Barn", "Sushi Go")),
        P("items", "array", "Dishes to order.", lambda r: r.sample(["pizza", "noodles", "tacos", "burger", "fries", "salad", "soup"], r.randint(1, 3)),
          items="string"),
        P("quantities", "array", "How many of each dish, in the order of items.", lambda r: [r.randint(1, 4) for _ in range(3)],
          items="integer")],
       ["Order {clause}.", "I'd like {clause}, please."], "{basket} from {restaurant}", "shopping",
       extra={"slots": lambda a: {"basket": ", ".join(f"{q} {i}" for q, i in zip(a["quantities"], a["items"]))},
              "fit": lambda a: a.update(quantities=a["quantities"][:len(a["items"])])}),
    Fn("rides.request", "Request a car ride from a pickup address.",
       [P("pickup", "string", "Full pickup address: street, city, state.",
          _pick("12 Oak Street, Austin, TX", "400 Pine Avenue, Denver, CO", "9 Harbor Road, Boston, MA", "77 Elm Drive, Miami, FL")),
        P("ride_type", "string", "Kind of car.", _pick("shared", "comfort", "xl"), enum=["shared", "comfort", "xl"]),
        P("max_wait_minutes", "integer", "Longest acceptable wait in minutes.", _int(3, 20))],
       ["Book a {clause}.", "Get me a {clause}."], "{ride_type} ride from {pickup}, waiting at most {max_wait_minutes} minutes",
       "travel"),
    Fn("calendar.days_between", "Number of days between two dates.",
       [P("start_date", "string", "First date, YYYY-MM-DD.", _date), P("end_date", "string", "Second date, YYYY-MM-DD.", _date)],
       ["How many days are there between {clause}?", "Count the days from {clause}."], "{start_date} and {end_date}", "time"),
    Fn("holidays.list", "Public holidays of a country in a month.",
       [P("country", "string", "Country name.", _pick(*_COUNTRIES)), P("month", "string", "Month name.", _pick(*_MONTHS), enum=_MONTHS)],
       ["Which public holidays are in {clause}?", "List the holidays in {clause}."], "{country} in {month}", "time"),
]


def name_words(name: str) -> set[str]:
    """A function name's words longer than 3 letters: two functions sharing one may answer the same request."""
    return {w for w in re.split(r"[_.]", name.lower()) if len(w) > 3}


def _render(fn: Fn, args: dict) -> str:
    """The clause with the arguments spelled; an optional phrase stays only when its argument is given."""
    hide = fn.extra.get("hide", set())
    shows = {p.name: (p.show or str)(args[p.name]) if p.name in args else None for p in fn.params}
    for p in fn.params:   # an object's keys as {name.key}
        if p.props and p.name in args:
            shows.update({f"{p.name}.{k}": str(v) for k, v in args[p.name].items()})
    if "slots" in fn.extra:   # spellings that join several arguments ("2 burgers and 1 fries")
        shows.update(fn.extra["slots"](args))

    def opt(m: re.Match) -> str:
        names = re.findall(r"{([\w.]+)}", m.group(1))
        if not all(shows.get(n) is not None for n in names):
            return ""
        return re.sub(r"{([\w.]+)}", lambda k: "" if k.group(1) in hide else shows[k.group(1)], m.group(1))

    clause = fn.clause
    if "bare" in fn.extra and not any(p.name in args for p in fn.params if not p.required):
        clause = fn.extra["bare"]
    clause = re.sub(r"\[([^\]]*)\]", opt, clause)
    return re.sub(r"{([\w.]+)}", lambda k: shows[k.group(1)], clause)


def draw_args(fn: Fn, rng: random.Random, p_optional: float = 0.4) -> dict:
    args = {}
    for p in fn.params:
        if p.required or rng.random() < p_optional:
            args[p.name] = p.gen(rng)
    for a, b in (("from_currency", "to_currency"), ("from_unit", "to_unit"), ("origin", "destination"),
                 ("start_date", "end_date")):
        while a in args and args.get(a) == args.get(b):
            args[b] = next(p for p in fn.params if p.name == b).gen(rng)
    if fn.name == "binomial_coefficient":
        args["k"] = min(args["k"], args["n"])
    if "fit" in fn.extra:
        fn.extra["fit"](args)
    return args


def _same_args(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def request(fn: Fn, sets: list[dict], rng: random.Random) -> str:
    """A request for one or more argument sets: a template spelling the arguments itself ("How many {to_unit}
    is {value} {from_unit}?") serves one set; a {clause} template lists every set's clause."""
    asks = fn.asks if len(sets) == 1 else [a for a in fn.asks if "{clause}" in a]
    ask = rng.choice(asks)
    if "{clause}" not in ask:
        return ask.format(**{p.name: (p.show or str)(sets[0][p.name]) for p in fn.params if p.name in sets[0]})
    clauses = [_render(fn, s) for s in sets]
    sep = "; " if any(" and " in c or ", " in c for c in clauses) else ", "   # "2 and 20; 50 and 52; and 24 and 33"
    last = "; and " if sep == "; " else " and "
    text = ask.format(clause=clauses[0] if len(clauses) == 1 else sep.join(clauses[:-1]) + last + clauses[-1])
    return text[:1].upper() + text[1:]


def exchanges(n: int, rng: random.Random) -> list[dict]:
    """`n` single-call exchanges {lang, user, call, result, answer, spec, tools} over the pool (functions in turn)."""
    out = []
    for i in range(n):
        fn = FUNCTIONS[i % len(FUNCTIONS)]
        args = draw_args(fn, rng)
        call = {"name": fn.name, "arguments": json.dumps(args, ensure_ascii=False)}
        out.append({"lang": "en", "user": request(fn, [args], rng), "call": call, "result": "", "answer": "",
                    "spec": fn.spec(), "tools": [fn.spec()]})
    return out


def _clause_sets(fn: Fn, k: int, rng: random.Random) -> list[dict] | None:
    """`k` distinct full argument sets of `fn` whose clauses read differently, or None."""
    sets: list[dict] = []
    for _ in range(8 * k):
        a = draw_args(fn, rng, p_optional=0.0)
        if len(sets) < k and not any(_same_args(a, s) for s in sets) \
                and len({_render(fn, s) for s in sets + [a]}) == len(sets) + 1:
            sets.append(a)
    return sets if len(sets) == k else None


def _calls(fn: Fn, sets: list[dict]) -> list[dict]:
    return [{"name": fn.name, "arguments": json.dumps(s, ensure_ascii=False)} for s in sets]


def parallel_clauses(n: int, rng: random.Random) -> list[tuple[str, list[dict], list[dict]]]:
    """(request, calls, tools): one request listing 2-4 full argument sets of one function."""
    out = []
    while len(out) < n:
        fn = rng.choice(FUNCTIONS)
        sets = _clause_sets(fn, rng.choice([2, 2, 2, 3, 3, 4]), rng)
        if sets:
            out.append((request(fn, sets, rng), _calls(fn, sets), [fn.spec()]))
    return out


def multi_requests(n: int, rng: random.Random) -> list[tuple[str, list[dict], list[dict]]]:
    """(request, calls, tools): two or three functions of one domain asked in one turn, one of them for 2-3
    argument sets ("the GCD of 12 and 18, and of 40 and 64. Also, ..."), 3-4 calls in all; the tools are the
    asked functions, sometimes with one more of the domain that is not asked for."""
    by_domain: dict[str, list[Fn]] = {}
    for f in FUNCTIONS:
        by_domain.setdefault(f.domain, []).append(f)
    out = []
    while len(out) < n:
        pool = by_domain[rng.choice(sorted(by_domain))]
        if len(pool) < 2:
            continue
        fns = rng.sample(pool, min(len(pool), rng.choice([2, 2, 3])))
        multi = rng.randrange(len(fns))
        parts, calls = [], []
        for i, fn in enumerate(fns):
            k = (rng.choice([2, 2, 3]) if len(fns) == 2 else 2) if i == multi else 1   # 3-4 calls in all
            sets = _clause_sets(fn, k, rng)
            if not sets or (len(sets) > 1 and not any("{clause}" in a for a in fn.asks)):
                break
            text = request(fn, sets, rng)
            parts.append(text if not parts else text[:1].lower() + text[1:] if text[1:2].islower() else text)
            calls += _calls(fn, sets)
        else:
            extra = [f for f in pool if f not in fns]
            tools = [f.spec() for f in fns + (rng.sample(extra, 1) if extra and rng.random() < 0.4 else [])]
            rng.shuffle(tools)
            out.append((" Also, ".join(parts), calls, tools))
    return out


def _numeric_required(fn: Fn) -> int:
    return sum(p.required and p.type in ("integer", "number") for p in fn.params)


def near_misses(n: int, rng: random.Random) -> list[tuple[str, list[dict], str]]:
    """(request, tools, needed function): a request for one function, offered 1-3 others that share no name
    word with it: half of its own domain, half of any domain whose numbers the request could fill (a triangle's
    base and height fit a body-mass-index function's weight and height; a refusal must read the purpose, not
    the argument types). One tool in half of them, as most of BFCL's irrelevance rows offer."""
    by_domain: dict[str, list[Fn]] = {}
    for f in FUNCTIONS:
        by_domain.setdefault(f.domain, []).append(f)
    out = []
    while len(out) < n:
        fn = rng.choice(FUNCTIONS)
        # no function sharing a name word: weather.forecast could answer a weather.current request
        unrelated = [f for f in FUNCTIONS if f is not fn and not name_words(f.name) & name_words(fn.name)]
        k = _numeric_required(fn)
        if len(out) % 2 and k:
            others = [f for f in unrelated if f.domain != fn.domain and 0 < _numeric_required(f) <= k]
        else:
            others = [f for f in unrelated if f.domain == fn.domain]
        if not others:
            continue
        user = request(fn, [draw_args(fn, rng)], rng)
        tools = [f.spec() for f in rng.sample(others, min(len(others), rng.choice([1, 1, 2, 3])))]
        out.append((user, tools, fn.name))
    return out
