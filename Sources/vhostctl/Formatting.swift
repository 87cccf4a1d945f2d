/// `value` with exactly `places` decimals, for the CLI's tables and summaries; negative values keep
/// their sign, and NaN or an infinity prints as such (a measure that divided by zero) instead of trapping.
func fixed(_ value: Double, places: Int) -> String {
    guard value.isFinite, value.magnitude < 1e15 else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
    var scale = 1
    for _ in 0..<places { scale *= 10 }
    let scaled = Int((value.magnitude * Double(scale)).rounded())
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard places > 0 else { return sign + String(scaled) }
    let fraction = String(scaled % scale)
    return sign + "\(scaled / scale)." + String(repeating: "0", count: places - fraction.count) + fraction
}
